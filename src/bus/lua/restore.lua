-- Record a member's presence again after its node found itself unregistered (reaped
-- while alive, or Redis lost its data). Idempotent: a member already present is left
-- as it is, so restoring twice never counts a user's connection twice. No notice is
-- published. Every key is in the room's slot.
-- KEYS[1] room members hash   KEYS[2] room users hash   KEYS[3] room roster
-- KEYS[4] room names hash
-- ARGV[1] member field   ARGV[2] leave envelope   ARGV[3] user id ('' when anonymous)
-- ARGV[4] roster key   ARGV[5] user JSON
-- Returns 1 if the member was recorded again.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[3] == '' or redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then
  redis.call('ZADD', KEYS[3], 0, ARGV[4])
  redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
end
return 1
