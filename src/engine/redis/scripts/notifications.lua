-- One user's notifications (inbox.lua, prepended, has the rules): ARGV[1] names the step.
--
-- KEYS: ids, items, states, prefs, the tenant's channel.
-- ARGV: step, notification retention in ms, notifications kept at most, publish command, tenant,
-- the two halves of a stats key, user, then the step's own:
--   summary                      -> {unread, prefs JSON | false}
--   page <before | ''> <count>   -> {unread, more 0/1, id, envelope, read 0/1, ...}
--   read|unread <id>             -> {'missing'} | {'ok', unread}
--   readall <upTo | ''>          -> {'missing'} | {'ok', unread, readUpTo | ''}
--   prefs <preferences JSON>     -> version
--   stats <first day> <last day> -> JSON {type: {p, d, r, s: [seconds]}}
-- Read-state and preference changes are published to the user's connections (a control message,
-- see control.rs) in the same step, so every node sees them in the order they were made.
local k = {ids = KEYS[1], items = KEYS[2], states = KEYS[3], prefs = KEYS[4],
  retention = tonumber(ARGV[2]), max = tonumber(ARGV[3]), stats = {ARGV[6], ARGV[7]}}
local step, publish, tenant, user = ARGV[1], ARGV[4], ARGV[5], ARGV[8]
local now = N.now_ms()
N.trim(k, now)

-- A control message must start with {"control": (control.rs), and cjson orders keys freely.
local function tell(msg)
  msg.tenantId = tenant
  msg.userId = user
  local body = cjson.encode(msg)
  redis.call(publish, KEYS[5], '{"control":"notification_state",' .. string.sub(body, 2))
end

if step == 'summary' then
  return {N.unread(k, N.load(k, user)), redis.call('HGET', k.prefs, user)}
elseif step == 'page' then
  local st = N.load(k, user)
  local count = tonumber(ARGV[10])
  local max = '+inf'
  if ARGV[9] ~= '' then max = '(' .. N.score(ARGV[9]) end
  local ids = redis.call('ZREVRANGEBYSCORE', k.ids, max, '-inf', 'LIMIT', 0, count + 1)
  local out = {N.unread(k, st), 0}
  for i, id in ipairs(ids) do
    if i > count then
      out[2] = 1
      break
    end
    local read = 0
    if N.is_read(st, id) then read = 1 end
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', k.items, id) or ''
    out[#out + 1] = read
  end
  return out
elseif step == 'read' or step == 'unread' then
  local id = ARGV[9]
  if not N.valid(id) or redis.call('HEXISTS', k.items, id) == 0 then return {'missing'} end
  local st = N.load(k, user)
  N.set_read(k, st, id, step == 'read')
  N.save(k, user, st)
  if step == 'read' then N.count_read(k, user, id, now) end
  local unread = N.unread(k, st)
  tell({unreadCount = unread,
    changed = {{id = id, read = step == 'read'}}})
  return {'ok', unread}
elseif step == 'readall' then
  local up_to = ARGV[9]
  if up_to == '' then
    up_to = redis.call('ZREVRANGE', k.ids, 0, 0)[1]
    if not up_to then return {'ok', 0, ''} end
  elseif not N.valid(up_to) or redis.call('HEXISTS', k.items, up_to) == 0 then
    return {'missing'}
  end
  local st = N.load(k, user)
  -- Stats for what this reads: the newest of them, a bounded number.
  local newly = redis.call('ZREVRANGEBYSCORE', k.ids, N.score(up_to), '-inf', 'LIMIT', 0, 1000)
  local counted = 0
  for _, id in ipairs(newly) do
    if counted >= 200 then break end
    if not N.is_read(st, id) then
      N.count_read(k, user, id, now)
      counted = counted + 1
    end
  end
  if not st.m or not N.le(up_to, st.m) then
    st.m = up_to
    for id in pairs(st.r) do
      if N.le(id, up_to) then st.r[id] = nil end
    end
    st.u = {}
  else
    for id in pairs(st.u) do
      if N.le(id, up_to) then st.u[id] = nil end
    end
  end
  N.compact(k, st)
  N.save(k, user, st)
  local unread = N.unread(k, st)
  tell({unreadCount = unread, changed = {}, readUpTo = up_to})
  return {'ok', unread, up_to}
elseif step == 'prefs' then
  local version = 1
  local old = redis.call('HGET', k.prefs, user)
  if old then version = cjson.decode(old).v + 1 end
  redis.call('HSET', k.prefs, user, '{"v":' .. version .. ',"p":' .. ARGV[9] .. '}')
  redis.call(publish, KEYS[5], '{"control":"preferences","tenantId":' .. cjson.encode(tenant) ..
    ',"userId":' .. cjson.encode(user) .. ',"version":' .. version .. ',"preferences":' ..
    ARGV[9] .. '}')
  return version
elseif step == 'stats' then
  local types = {'license_expiring', 'license_expired', 'usage_limit_warning',
    'usage_limit_exceeded', 'module_activated', 'module_deactivated', 'license_updated'}
  local out = {}
  for _, t in ipairs(types) do
    local p, d, samples, readers = 0, 0, {}, {}
    for day = tonumber(ARGV[9]), tonumber(ARGV[10]) do
      local key = k.stats[1] .. 'stats' .. k.stats[2] .. day
      local v = redis.call('HMGET', key, t .. ':p', t .. ':d')
      p = p + (tonumber(v[1]) or 0)
      d = d + (tonumber(v[2]) or 0)
      local suffix = k.stats[2] .. day .. ':' .. t
      readers[#readers + 1] = k.stats[1] .. 'readers' .. suffix
      for _, s in ipairs(redis.call('LRANGE', k.stats[1] .. 'ttr' .. suffix, 0, -1)) do
        samples[#samples + 1] = tonumber(s)
      end
    end
    local r = redis.call('PFCOUNT', unpack(readers))
    if p > 0 or d > 0 or r > 0 then out[t] = {p = p, d = d, r = r, s = samples} end
  end
  return cjson.encode(out)
end
return redis.error_reply('unknown step ' .. tostring(step))
