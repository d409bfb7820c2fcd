-- Publish one message: append it to the room's bounded stream (the history), refresh
-- the history's expiry, and publish "<id> <envelope>" on the room's channel.
-- The stream entry id is the message id; the envelope itself carries no id.
-- KEYS[1] room stream   ARGV[1] history size   ARGV[2] history ttl (ms)
-- ARGV[3] room channel  ARGV[4] envelope (JSON)
-- Returns the message id.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], id .. ' ' .. ARGV[4])
return id
