-- Leave: remove the member's presence and announce the leave (once).
-- KEYS[1] room members hash   KEYS[2] this node's room set
-- ARGV[1] member field   ARGV[2] room channel   ARGV[3] leave envelope
-- ARGV[4] room name   ARGV[5] '1' when this node has no other member in the room
-- Returns 1 if the member was present.
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[5] == '1' then redis.call('SREM', KEYS[2], ARGV[4]) end
if removed == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return removed
