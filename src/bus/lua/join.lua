-- Join: unless the user is barred from the room (server API kick), record the member's
-- presence and announce it, then read the members, where the room's log stands and the
-- replay (after since, or else the last N entries). Every key is in the room's slot.
-- KEYS[1] room members hash   KEYS[2] room stream
-- KEYS[3] room users hash (user id -> connections; jwt mode: one member per user)
-- KEYS[4] the user's bar key in this room
-- ARGV[1] member field (node|conn)   ARGV[2] the member's leave envelope (kept as the
-- hash value, so a reaper can announce the leave verbatim)   ARGV[3] room channel
-- ARGV[4] join envelope   ARGV[5] since ('' for none)   ARGV[6] replay limit
-- ARGV[7] publish command (PUBLISH, or SPUBLISH on a cluster)
-- ARGV[8] user id ('' when anonymous: one member per connection)
-- ARGV[9] without since: how many of the newest entries to replay (0 for none)
-- Returns {-2, ms the bar has left} when barred, else
-- {member values, head, recovered (-1 = no since, 0, 1), entries}.
local barred = redis.call('PTTL', KEYS[4])
if barred > 0 then return {-2, barred} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
-- A user's first connection in the room (on any replica) announces the join.
if ARGV[8] == '' or redis.call('HINCRBY', KEYS[3], ARGV[8], 1) == 1 then
  redis.call(ARGV[7], ARGV[3], ARGV[4])
end
local members = redis.call('HVALS', KEYS[1])
local head, maxdel = '0-0', '0-0'
local exists = redis.call('EXISTS', KEYS[2]) == 1
if exists then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then head = info[i + 1]
    elseif info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
  end
end
if ARGV[5] == '' then
  local n = tonumber(ARGV[9])
  if not exists or n < 1 then return {members, head, -1, {}} end
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', n)
  local entries = {}
  for i = #newest, 1, -1 do entries[#entries + 1] = newest[i] end
  return {members, head, -1, entries}
end
local since = ARGV[5]
local recovered = 0
if since == maxdel then recovered = 1
elseif exists and #redis.call('XRANGE', KEYS[2], since, since) == 1 then recovered = 1 end
local entries = {}
if exists then entries = redis.call('XRANGE', KEYS[2], '(' .. since, '+', 'COUNT', ARGV[6]) end
return {members, head, recovered, entries}
