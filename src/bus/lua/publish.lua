-- Publish one message: append it to the room's bounded stream (the history), refresh
-- the history's expiry, and publish "<id> <envelope>" on the room's channel.
-- The stream entry id is the message id; the envelope itself carries no id.
-- With an idempotency key, a key already recorded returns its id and nothing is
-- published; otherwise the key is recorded with the new id. Check, publish and record
-- are one atomic step, so concurrent retries (on any replica) publish once.
-- Every key and the channel are in the room's slot (on a cluster: the owning shard).
-- KEYS[1] room stream   KEYS[2] idempotency key (optional)
-- ARGV[1] history size   ARGV[2] history ttl (ms)   ARGV[3] room channel
-- ARGV[4] envelope (JSON)   ARGV[5] publish command (PUBLISH, or SPUBLISH on a cluster)
-- ARGV[6] idempotency ttl (ms; with KEYS[2])
-- Returns {message id, duplicate (0/1)}.
if KEYS[2] then
  local first = redis.call('GET', KEYS[2])
  if first then return {first, 1} end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call(ARGV[5], ARGV[3], id .. ' ' .. ARGV[4])
if KEYS[2] then redis.call('SET', KEYS[2], id, 'PX', ARGV[6]) end
return {id, 0}
