-- Reap a dead node (once: ZREM decides which reaper wins): remove every member it had
-- and announce each leave with the envelope stored at join (for a user with connections
-- left on other replicas, jwt mode, only their count drops).
-- KEYS[1] the node set   ARGV[1] the dead node   ARGV[2] key prefix
-- Returns how many members were removed.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local setkey = ARGV[2] .. ':node:' .. ARGV[1] .. ':rooms'
local pfx = ARGV[1] .. '|'
local n = 0
for _, room in ipairs(redis.call('SMEMBERS', setkey)) do
  local mkey = ARGV[2] .. ':{' .. room .. '}:members'
  local ch = ARGV[2] .. ':{' .. room .. '}:ch'
  local ukey = ARGV[2] .. ':{' .. room .. '}:users'
  local all = redis.call('HGETALL', mkey)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #pfx) == pfx then
      redis.call('HDEL', mkey, all[i])
      local last = true
      local ok, env = pcall(cjson.decode, all[i + 1])
      local uid = ok and type(env) == 'table' and type(env.u) == 'table' and env.u.id
      if type(uid) == 'string' and uid ~= '' then
        local left = redis.call('HINCRBY', ukey, uid, -1)
        if left <= 0 then redis.call('HDEL', ukey, uid) else last = false end
      end
      if last then redis.call('PUBLISH', ch, all[i + 1]) end
      n = n + 1
    end
  end
end
redis.call('DEL', setkey)
return n
