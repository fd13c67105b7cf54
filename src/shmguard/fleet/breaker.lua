-- shmguard fleet: an endpoint's fleet-wide breaker episode. Times are Redis's.
-- KEYS[1]: the endpoint's breaker hash {born, seq, state, until, origin}.
-- ARGV: host, op ("open" | "close" | "read"), remaining_ms (open), ttl_ms
-- An "open" starts a new episode (seq + 1) unless one is open: then it only
-- extends it. A "close" ends an open episode (seq + 1).
-- Returns {born, seq, state (0 closed, 1 open), remaining_ms, origin}.
local key, host, op = KEYS[1], ARGV[1], ARGV[2]
local rem, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
if not (rem and ttl) or rem < 0 or rem > 864e5 or ttl <= 0 or
    (op ~= 'open' and op ~= 'close' and op ~= 'read') then
  return redis.error_reply('ERR shmguard fleet: bad breaker arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', key, 'born', 'seq', 'state', 'until', 'origin')
local born, seq, state, untl = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
local origin = v[5] or ''
if not (born and seq and untl) or (state ~= 0 and state ~= 1) or seq < 0 or seq ~= math.floor(seq) then
  born, seq, state, untl, origin = now, 0, 0, 0, ''  -- missing or malformed: start afresh
end
local open = state == 1 and untl > now
if op == 'open' then
  if open then
    untl = math.max(untl, now + rem)
  else
    seq, state, untl, origin = seq + 1, 1, now + rem, host
  end
elseif op == 'close' and state == 1 then
  seq, state, untl, origin = seq + 1, 0, 0, host
end
redis.call('HSET', key, 'born', born, 'seq', seq, 'state', state, 'until', untl, 'origin', origin)
redis.call('PEXPIRE', key, ttl)
local left = (state == 1 and untl > now) and (untl - now) or 0
return {born, seq, state, left, origin}
