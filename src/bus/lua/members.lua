-- One page of a room's roster (one entry per member as clients see them), in lexical
-- order of roster keys. Every key is in the room's slot.
-- KEYS[1] room roster   KEYS[2] room names hash
-- ARGV[1] cursor: the last roster key of the previous page ('' for the first page)
-- ARGV[2] page size
-- Returns {member JSONs, next cursor ('' on the last page), member count}.
local min = '-'
if ARGV[1] ~= '' then min = '(' .. ARGV[1] end
local n = tonumber(ARGV[2])
local keys = redis.call('ZRANGEBYLEX', KEYS[1], min, '+', 'LIMIT', 0, n + 1)
local nxt = ''
if #keys > n then
  keys[#keys] = nil
  nxt = keys[#keys]
end
local members = {}
if #keys > 0 then members = redis.call('HMGET', KEYS[2], unpack(keys)) end
return {members, nxt, redis.call('ZCARD', KEYS[1])}
