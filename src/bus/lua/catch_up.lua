-- Messages after since still in the room's stream, and whether that is all of them.
-- KEYS[1] room stream   ARGV[1] since   ARGV[2] limit
-- Returns {complete (0/1), entries}; complete is 0 when the stream was trimmed past
-- since or lost.
local since = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {}} end
local maxdel = '0-0'
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
end
local ok = 0
if since == maxdel or #redis.call('XRANGE', KEYS[1], since, since) == 1 then ok = 1 end
return {ok, redis.call('XRANGE', KEYS[1], '(' .. since, '+', 'COUNT', ARGV[2])}
