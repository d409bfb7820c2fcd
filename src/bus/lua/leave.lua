-- Leave: remove the member's presence and announce the leave (once). Every key is in
-- the room's slot.
-- KEYS[1] room members hash   KEYS[2] room users hash
-- ARGV[1] member field   ARGV[2] room channel   ARGV[3] leave envelope
-- ARGV[4] publish command (PUBLISH, or SPUBLISH on a cluster)
-- ARGV[5] user id ('' when anonymous)
-- Returns 1 if the member was present.
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  -- A user's last connection in the room (on any replica) announces the leave.
  local last = true
  if ARGV[5] ~= '' then
    local left = redis.call('HINCRBY', KEYS[2], ARGV[5], -1)
    if left <= 0 then redis.call('HDEL', KEYS[2], ARGV[5]) else last = false end
  end
  if last then redis.call(ARGV[4], ARGV[2], ARGV[3]) end
end
return removed
