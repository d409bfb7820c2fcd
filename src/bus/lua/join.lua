-- Join: unless the user is barred from the room (server API kick), record the member's
-- presence and announce it, then read the first page of the roster, the member count,
-- where the room's log stands and the replay (after since, or else the last N
-- entries). Every key is in the room's slot.
-- KEYS[1] room members hash (node|conn -> leave envelope)   KEYS[2] room stream
-- KEYS[3] room users hash (user id -> connections; jwt mode: one member per user)
-- KEYS[4] the user's bar key in this room
-- KEYS[5] room roster (sorted set of roster keys, score 0: paged in lexical order)
-- KEYS[6] room names hash (roster key -> user JSON)
-- KEYS[7] room presence sequence number
-- ARGV[1] member field (node|conn)   ARGV[2] the member's leave envelope (kept as the
-- hash value, so a reaper can announce the leave verbatim)   ARGV[3] room channel
-- ARGV[4] join envelope (JSON; stamped here with "q" and "m")   ARGV[5] since ('' for
-- none)   ARGV[6] replay limit   ARGV[7] publish command (PUBLISH, or SPUBLISH on a
-- cluster)   ARGV[8] user id ('' when anonymous: one member per connection)
-- ARGV[9] without since: how many of the newest entries to replay (0 for none)
-- ARGV[10] roster key   ARGV[11] user JSON   ARGV[12] members to return (page size)
-- Returns {-2, ms the bar has left} when barred, else
-- {member JSONs, head, recovered (-1 = no since, 0, 1), entries, member count,
--  presence seq, next cursor ('' when the page holds every member)}.
local barred = redis.call('PTTL', KEYS[4])
if barred > 0 then return {-2, barred} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
-- A user's first connection in the room (on any replica) announces the join.
if ARGV[8] == '' or redis.call('HINCRBY', KEYS[3], ARGV[8], 1) == 1 then
  redis.call('ZADD', KEYS[5], 0, ARGV[10])
  redis.call('HSET', KEYS[6], ARGV[10], ARGV[11])
  -- A new counter starts at the time in microseconds, so numbers keep increasing when
  -- a room that emptied (and lost its counter) fills again.
  if redis.call('EXISTS', KEYS[7]) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[7], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
  end
  local seq = redis.call('INCR', KEYS[7])
  local env = string.sub(ARGV[4], 1, -2) .. ',"q":' .. string.format('%d', seq) .. ',"m":' .. redis.call('ZCARD', KEYS[5]) .. '}'
  redis.call(ARGV[7], ARGV[3], env)
end
local pseq = tonumber(redis.call('GET', KEYS[7]) or '0')
local count = redis.call('ZCARD', KEYS[5])
local n = tonumber(ARGV[12])
local members, nxt = {}, ''
if n > 0 then
  local keys = redis.call('ZRANGEBYLEX', KEYS[5], '-', '+', 'LIMIT', 0, n + 1)
  if #keys > n then
    keys[#keys] = nil
    nxt = keys[#keys]
  end
  if #keys > 0 then members = redis.call('HMGET', KEYS[6], unpack(keys)) end
end
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
  local r = tonumber(ARGV[9])
  if not exists or r < 1 then return {members, head, -1, {}, count, pseq, nxt} end
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', r)
  local entries = {}
  for i = #newest, 1, -1 do entries[#entries + 1] = newest[i] end
  return {members, head, -1, entries, count, pseq, nxt}
end
local since = ARGV[5]
local recovered = 0
if since == maxdel then recovered = 1
elseif exists and #redis.call('XRANGE', KEYS[2], since, since) == 1 then recovered = 1 end
local entries = {}
if exists then entries = redis.call('XRANGE', KEYS[2], '(' .. since, '+', 'COUNT', ARGV[6]) end
return {members, head, recovered, entries, count, pseq, nxt}
