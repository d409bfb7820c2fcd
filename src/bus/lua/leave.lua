-- Leave: remove the member's presence and announce the leave (once).
-- KEYS[1] room members hash   KEYS[2] this node's room set   KEYS[3] room users hash
-- ARGV[1] member field   ARGV[2] room channel   ARGV[3] leave envelope
-- ARGV[4] room name   ARGV[5] '1' when this node has no other member in the room
-- ARGV[6] user id ('' when anonymous)
-- Returns 1 if the member was present.
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[5] == '1' then redis.call('SREM', KEYS[2], ARGV[4]) end
if removed == 1 then
  -- A user's last connection in the room (on any replica) announces the leave.
  local last = true
  if ARGV[6] ~= '' then
    local left = redis.call('HINCRBY', KEYS[3], ARGV[6], -1)
    if left <= 0 then redis.call('HDEL', KEYS[3], ARGV[6]) else last = false end
  end
  if last then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
end
return removed
