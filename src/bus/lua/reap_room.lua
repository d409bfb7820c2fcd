-- Reap one room of a dead node: remove every member the node had there and announce
-- each leave with the envelope stored at join, stamped with the room's presence
-- sequence number and count (for a user with connections left on other replicas, jwt
-- mode, only their count drops). Idempotent: a second reaper (or a retry after a reaper
-- crashed) finds nothing left to remove. Every key is in the room's slot, so on a
-- cluster this runs on the shard that owns the room.
-- KEYS[1] room members hash   KEYS[2] room users hash   KEYS[3] room roster
-- KEYS[4] room names hash   KEYS[5] room presence sequence number
-- ARGV[1] the dead node   ARGV[2] room channel
-- ARGV[3] publish command (PUBLISH, or SPUBLISH on a cluster)
-- Returns how many members were removed.
local pfx = ARGV[1] .. '|'
local n = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #pfx) == pfx then
    redis.call('HDEL', KEYS[1], all[i])
    local last = true
    local ok, env = pcall(cjson.decode, all[i + 1])
    local uid = ok and type(env) == 'table' and type(env.u) == 'table' and env.u.id
    local rkey = 'c:' .. all[i]
    if type(uid) == 'string' and uid ~= '' then
      rkey = 'u:' .. uid
      local left = redis.call('HINCRBY', KEYS[2], uid, -1)
      if left <= 0 then redis.call('HDEL', KEYS[2], uid) else last = false end
    end
    if last then
      redis.call('ZREM', KEYS[3], rkey)
      redis.call('HDEL', KEYS[4], rkey)
      if redis.call('EXISTS', KEYS[5]) == 0 then
        local t = redis.call('TIME')
        redis.call('SET', KEYS[5], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
      end
      local seq = redis.call('INCR', KEYS[5])
      local count = redis.call('ZCARD', KEYS[3])
      redis.call(ARGV[3], ARGV[2], string.sub(all[i + 1], 1, -2) .. ',"q":' .. string.format('%d', seq) .. ',"m":' .. count .. '}')
    end
    n = n + 1
  end
end
if n > 0 and redis.call('ZCARD', KEYS[3]) == 0 then redis.call('DEL', KEYS[5]) end
return n
