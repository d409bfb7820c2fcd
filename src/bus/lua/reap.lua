-- Reap a dead node (once: ZREM decides which reaper wins): remove every member it had
-- and announce each leave with the envelope stored at join.
-- KEYS[1] the node set   ARGV[1] the dead node   ARGV[2] key prefix
-- Returns how many members were removed.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local setkey = ARGV[2] .. ':node:' .. ARGV[1] .. ':rooms'
local pfx = ARGV[1] .. '|'
local n = 0
for _, room in ipairs(redis.call('SMEMBERS', setkey)) do
  local mkey = ARGV[2] .. ':{' .. room .. '}:members'
  local ch = ARGV[2] .. ':{' .. room .. '}:ch'
  local all = redis.call('HGETALL', mkey)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #pfx) == pfx then
      redis.call('HDEL', mkey, all[i])
      redis.call('PUBLISH', ch, all[i + 1])
      n = n + 1
    end
  end
end
redis.call('DEL', setkey)
return n
