-- Node liveness, one key (the node set: node -> liveness deadline in ms; -1 while a
-- reaper removes the node's members). One script, three operations:
-- KEYS[1] the node set   ARGV[1] operation   ARGV[2] node   ARGV[3] deadline or now (ms)
-- 'beat':   set the node's deadline; returns 1 if the node was missing or being reaped
--           (its members must be recorded again), else 0.
-- 'claim':  mark a node whose deadline passed (or that a crashed reaper left) as being
--           reaped; returns 1 if the caller should reap it, else 0.
-- 'done':   forget a reaped node, unless it came back meanwhile; returns 1 if removed.
local op, node = ARGV[1], ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], node)
if op == 'beat' then
  redis.call('ZADD', KEYS[1], ARGV[3], node)
  if not score or tonumber(score) < 0 then return 1 end
  return 0
elseif op == 'claim' then
  if not score or tonumber(score) > tonumber(ARGV[3]) then return 0 end
  redis.call('ZADD', KEYS[1], -1, node)
  return 1
elseif op == 'done' then
  if score and tonumber(score) < 0 then
    redis.call('ZREM', KEYS[1], node)
    return 1
  end
  return 0
end
return redis.error_reply('unknown operation ' .. tostring(op))
