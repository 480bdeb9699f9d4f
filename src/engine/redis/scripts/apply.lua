-- Applies a Change atomically: checks the document and notice-state conditions, writes, then
-- appends each event to the history and publishes it. Each id is chosen here, not by XADD *,
-- because the stored envelope must contain its own id: the server clock's millisecond, or one
-- sequence number past the newest entry when the clock has not moved on.
--
-- An idempotency key (spec.idem, one-event publishes) is looked up first and recorded with the
-- event: a key seen before answers the earlier event (same fingerprint) or 'reused'.
--
-- Each event is also kept as a notification (inbox.lua, prepended): users whose preferences
-- mute it get it as read, and the tenant's notifications are trimmed to their retention.
--
-- KEYS: history stream, channel, document, notice hash, idempotency hash (key →
-- 'fingerprint\nid\nenvelope'), idempotency expiry set (key scored by expiry ms), then the
-- notification keys: ids, items, states, prefs; then the delivery keys: webhooks (hash name ->
-- endpoint JSON), queue (sorted set job -> due ms), job envelopes, job attempts.
-- ARGV: max length, ttl in ms, publish command (PUBLISH, or SPUBLISH on a cluster), the change
-- as JSON ({doc_check, doc_expect, doc_write, doc_set, notices, events: [[prefix, suffix]],
-- meta: [[type, severity 0-2, module | null]], idem: {key, fp, ttl, max} | null}), notification
-- retention in ms, notifications kept at most, the two halves of a stats key around its kind.
-- Reply: {'ok', id…[, 'jobs']} | {'conflict'} | {'replayed', id, envelope} | {'reused'}; a
-- trailing 'jobs' says deliveries were queued (the caller updates the index of due tenants).
local spec = cjson.decode(ARGV[4])
local idem = spec.idem
local now_ms
if type(idem) == 'table' then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- Forget expired keys, a bounded batch per call (the rest go on later calls).
  local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms, 'LIMIT', 0, 100)
  for _, k in ipairs(expired) do
    redis.call('HDEL', KEYS[5], k)
    redis.call('ZREM', KEYS[6], k)
  end
  local until_ms = redis.call('ZSCORE', KEYS[6], idem.key)
  local stored = redis.call('HGET', KEYS[5], idem.key)
  if stored and until_ms and tonumber(until_ms) > now_ms then
    local fp_end = string.find(stored, '\n', 1, true)
    local id_end = string.find(stored, '\n', fp_end + 1, true)
    if string.sub(stored, 1, fp_end - 1) ~= idem.fp then return {'reused'} end
    return {'replayed', string.sub(stored, fp_end + 1, id_end - 1), string.sub(stored, id_end + 1)}
  end
end
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
local k = {ids = KEYS[7], items = KEYS[8], states = KEYS[9], prefs = KEYS[10],
  retention = tonumber(ARGV[5]), max = tonumber(ARGV[6]), stats = {ARGV[7], ARGV[8]}}
local prefs = {}
local flat = redis.call('HGETALL', k.prefs)
for i = 1, #flat, 2 do prefs[#prefs + 1] = {flat[i], cjson.decode(flat[i + 1]).p} end
local hooks = {}
local flat_hooks = redis.call('HGETALL', KEYS[11])
for i = 1, #flat_hooks, 2 do hooks[#hooks + 1] = {flat_hooks[i], cjson.decode(flat_hooks[i + 1])} end
local severities = {info = 0, warning = 1, error = 2}
local function wants(hook, etype, severity)
  if hook.enabled ~= true or severity < severities[hook.minSeverity] then return false end
  if type(hook.types) ~= 'table' then return true end
  for _, t in ipairs(hook.types) do
    if t == etype then return true end
  end
  return false
end
local queued = 0
local first_payload
for i, e in ipairs(spec.events) do
  local id = string.format('%d-%d', ms, seq)
  local payload = e[1] .. id .. e[2]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'event', payload)
  redis.call(ARGV[3], KEYS[2], payload)
  local meta = spec.meta[i]
  redis.call('ZADD', k.ids, N.score(id), id)
  redis.call('HSET', k.items, id, payload)
  local day = N.stats_key(k, 'stats', id)
  redis.call('HINCRBY', day, meta[1] .. ':p', 1)
  redis.call('PEXPIRE', day, k.retention + 86400000)
  for _, h in ipairs(hooks) do
    if wants(h[2], meta[1], meta[2]) then
      local job = 'w|' .. h[1] .. '|' .. id
      redis.call('ZADD', KEYS[12], string.format('%d', ms), job)
      redis.call('HSET', KEYS[13], job, payload)
      redis.call('HSET', KEYS[14], job, 0)
      queued = queued + 1
    end
  end
  for _, p in ipairs(prefs) do
    if N.muted(p[2], meta[1], meta[2], meta[3]) then
      local st = N.load(k, p[1])
      N.set_read(k, st, id, true)
      N.save(k, p[1], st)
    end
  end
  table.insert(out, id)
  first_payload = first_payload or payload
  seq = seq + 1
end
N.trim(k, ms)
redis.call('PEXPIRE', k.ids, k.retention)
redis.call('PEXPIRE', k.items, k.retention)
if type(idem) == 'table' then
  redis.call('HSET', KEYS[5], idem.key, idem.fp .. '\n' .. out[2] .. '\n' .. first_payload)
  redis.call('ZADD', KEYS[6], now_ms + idem.ttl, idem.key)
  -- Bounded: beyond max keys, the soonest to expire are forgotten.
  local extra = redis.call('ZCARD', KEYS[6]) - idem.max
  if extra > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[6], extra)
    for i = 1, #popped, 2 do redis.call('HDEL', KEYS[5], popped[i]) end
  end
  redis.call('PEXPIRE', KEYS[5], idem.ttl)
  redis.call('PEXPIRE', KEYS[6], idem.ttl)
end
local horizon = ms - tonumber(ARGV[2])
if horizon > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', horizon))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if queued > 0 then table.insert(out, 'jobs') end
return out
