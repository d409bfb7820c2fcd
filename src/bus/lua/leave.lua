-- Leave: remove the member's presence and announce the leave (once per user). Every key
-- is in the room's slot.
-- KEYS[1] room members hash   KEYS[2] room users hash   KEYS[3] room roster
-- KEYS[4] room names hash   KEYS[5] room presence sequence number
-- ARGV[1] member field   ARGV[2] room channel   ARGV[3] leave envelope (JSON; stamped
-- here with "q" and "m")   ARGV[4] publish command (PUBLISH, or SPUBLISH on a cluster)
-- ARGV[5] user id ('' when anonymous)   ARGV[6] roster key
-- Returns 1 if the member was present.
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  -- A user's last connection in the room (on any replica) announces the leave.
  local last = true
  if ARGV[5] ~= '' then
    local left = redis.call('HINCRBY', KEYS[2], ARGV[5], -1)
    if left <= 0 then redis.call('HDEL', KEYS[2], ARGV[5]) else last = false end
  end
  if last then
    redis.call('ZREM', KEYS[3], ARGV[6])
    redis.call('HDEL', KEYS[4], ARGV[6])
    if redis.call('EXISTS', KEYS[5]) == 0 then
      local t = redis.call('TIME')
      redis.call('SET', KEYS[5], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
    end
    local seq = redis.call('INCR', KEYS[5])
    local count = redis.call('ZCARD', KEYS[3])
    redis.call(ARGV[4], ARGV[2], string.sub(ARGV[3], 1, -2) .. ',"q":' .. string.format('%d', seq) .. ',"m":' .. count .. '}')
    -- The last member: forget the counter (a later first join starts a higher one).
    if count == 0 then redis.call('DEL', KEYS[5]) end
  end
end
return removed
