-- Applies a Change atomically: checks the document and notice-state conditions, writes, then
-- appends each event to the history and publishes it. Each id is chosen here, not by XADD *,
-- because the stored envelope must contain its own id: the server clock's millisecond, or one
-- sequence number past the newest entry when the clock has not moved on.
--
-- KEYS: history stream, channel, document, notice hash.
-- ARGV: max length, ttl in ms, publish command (PUBLISH, or SPUBLISH on a cluster), the change
-- as JSON ({doc_check, doc_expect, doc_write, doc_set, notices, events: [[prefix, suffix]]}).
-- Reply: {'ok', id…} | {'conflict'}.
local spec = cjson.decode(ARGV[4])
local function holds(current, expected)
  if expected == cjson.null then return current == false end
  return current == expected
end
if spec.doc_check and not holds(redis.call('GET', KEYS[3]), spec.doc_expect) then
  return {'conflict'}
end
for _, f in ipairs(spec.notices) do
  if not holds(redis.call('HGET', KEYS[4], f.field), f.expect) then return {'conflict'} end
end
if spec.doc_write then
  if spec.doc_set == cjson.null then redis.call('DEL', KEYS[3]) else redis.call('SET', KEYS[3], spec.doc_set) end
end
for _, f in ipairs(spec.notices) do
  if f.set == cjson.null then redis.call('HDEL', KEYS[4], f.field) else redis.call('HSET', KEYS[4], f.field, f.set) end
end
local out = {'ok'}
if #spec.events == 0 then return out end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local lms, lseq = string.match(last[1][1], '^(%d+)-(%d+)$')
  lms = tonumber(lms)
  if ms <= lms then
    ms = lms
    seq = tonumber(lseq) + 1
  end
end
for _, e in ipairs(spec.events) do
  local id = string.format('%d-%d', ms, seq)
  local payload = e[1] .. id .. e[2]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'event', payload)
  redis.call(ARGV[3], KEYS[2], payload)
  table.insert(out, id)
  seq = seq + 1
end
local horizon = ms - tonumber(ARGV[2])
if horizon > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', horizon))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return out
