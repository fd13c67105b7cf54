-- shmguard fleet: one host's share of a fleet-wide rate (max-min fair on
-- reported demand). Runs atomically in Redis; times are Redis's (TIME).
-- KEYS[1]: the endpoint's hash. Fields: "h:<host>" = "grant|expiry_ms|demand|epoch",
--   "_born" = ms the hash was (re)made, "_grace" = ms grace ends, "_want" = hosts expected.
-- ARGV: host, epoch, demand, rate, lease_ms, held, seen
-- Returns {grant (string), remaining_ms, live hosts, grace 0/1} or an error.
-- Invariant: the sum of unexpired grants never exceeds rate: a grant is at
-- most rate minus the other hosts' unexpired grants. During the grace after
-- Redis lost the hash (a restart), a host gets at most what it held: the
-- grants made before are unknown but summed to <= rate.
local key, host = KEYS[1], ARGV[1]
local epoch, demand, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, held, seen = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if not (epoch and demand and cap and lease and held and seen) or cap ~= cap or demand ~= demand
    or held ~= held or cap <= 0 or cap == math.huge or demand < 0 or lease <= 0 or held < 0 then
  return redis.error_reply('ERR shmguard fleet: bad arguments')
end
if demand == math.huge then demand = cap end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(f) local v = tonumber(redis.call('HGET', key, f) or '') return v end
local born, grace, want = num('_born'), num('_grace') or 0, num('_want') or 0
if grace ~= grace or grace > now + lease then  -- never set that far: hostile (or TIME stepped back)
  grace = now + lease
  redis.call('HSET', key, '_grace', grace)
end
if not born then
  born = now
  grace = (seen > 0) and (now + lease) or 0  -- a known host after a loss: grace
  want = 0
  redis.call('HSET', key, '_born', born, '_grace', grace, '_want', 0)
end
local live, others, names = {}, 0, 0
local mine = nil
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, 2) == 'h:' then
    local g, e, d, ep = string.match(v, '^([^|]+)|([^|]+)|([^|]+)|([^|]+)$')
    g, e, d, ep = tonumber(g), tonumber(e), tonumber(d), tonumber(ep)
    local ok = g and e and d and ep and g == g and d == d and g >= 0 and g <= cap and d >= 0
    if ok and e > now + lease then  -- no grant runs longer than a lease from now: hostile,
      e = now + lease               -- or TIME stepped back; it counts one lease from now
      redis.call('HSET', key, f, string.format('%.17g|%d|%.17g|%d', g, e, d, ep))
    end
    if not ok then
      -- hostile or corrupt: drop it and hold every host to what it has for a lease
      redis.call('HDEL', key, f)
      grace, want = now + lease, 1e9  -- only the lease's end lifts this grace
      redis.call('HSET', key, '_grace', grace, '_want', want)
    elseif e > now then
      local name = string.sub(f, 3)
      if name == host then mine = ep
      else others = others + g; names = names + 1; live[#live + 1] = {n = name, d = d} end
    elseif e < now - 20 * lease then
      redis.call('HDEL', key, f)  -- a host gone for long: forget it
    end
  end
end
if mine then
  local ahead = (mine - epoch) % 1024
  if ahead ~= 0 and ahead < 512 then
    return redis.error_reply('ERR shmguard fleet: superseded by a newer agent of this host')
  end
end
live[#live + 1] = {n = host, d = demand}
if grace > now and seen > want then
  want = seen
  redis.call('HSET', key, '_want', want)
end
if grace > now and want > 0 and #live >= want then
  grace = 0  -- every host seen before the loss is back: shares are rebuilt
  redis.call('HSET', key, '_grace', 0)
end
-- max-min fair over demands (water filling), then the rest in equal parts
table.sort(live, function(a, b) return a.d < b.d end)
local left, fair = cap, 0
for i, x in ipairs(live) do
  local a = math.min(x.d, left / (#live - i + 1))
  if x.n == host then fair = a end
  left = left - a
end
fair = fair + left / #live
local grant = math.min(fair, cap - others)
if grace > now then grant = math.min(grant, held) end
if grant < 0 then grant = 0 end
redis.call('HSET', key, 'h:' .. host,
  string.format('%.17g|%d|%.17g|%d', grant, now + lease, demand, epoch % 1024))
redis.call('PEXPIRE', key, 40 * lease)
return {string.format('%.17g', grant), lease, #live, (grace > now) and 1 or 0}
