-- Notification rules shared by apply.lua and notifications.lua: prepended to both at compile
-- time (scripts.rs), so the two cannot disagree. The same rules in Rust: notifications/inbox.rs.
--
-- Per tenant: `ids` (sorted set, id scored ms*4096+seq), `items` (hash id -> envelope),
-- `states` (hash user -> {"m": marker id or "", "r": [read ids after m], "u": [unread ids at
-- or before m]}), `prefs` (hash user -> {"v": version, "p": preferences}).
local N = {}
local SEVERITY = {info = 0, warning = 1, error = 2}

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end

-- The score as exact integer text (a plain number would be sent as %.14g and rounded).
function N.score(id)
  local ms, seq = parse_id(id)
  if seq > 4095 then seq = 4095 end
  return string.format('%d', ms * 4096 + seq)
end

function N.valid(id) return parse_id(id) ~= nil end

-- a <= b
function N.le(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am < bm or (am == bm and as <= bs)
end

function N.ms(id) return (parse_id(id)) end

function N.load(k, user)
  local st = {m = false, r = {}, u = {}}
  local raw = redis.call('HGET', k.states, user)
  if not raw then return st end
  local s = cjson.decode(raw)
  if s.m ~= '' then st.m = s.m end
  for _, id in ipairs(s.r) do st.r[id] = true end
  for _, id in ipairs(s.u) do st.u[id] = true end
  return st
end

function N.save(k, user, st)
  local r, u = {}, {}
  for id in pairs(st.r) do r[#r + 1] = id end
  for id in pairs(st.u) do u[#u + 1] = id end
  redis.call('HSET', k.states, user, cjson.encode({m = st.m or '', r = r, u = u}))
  redis.call('PEXPIRE', k.states, k.retention)
end

function N.is_read(st, id)
  if st.m and N.le(id, st.m) then return not st.u[id] end
  return st.r[id] == true
end

function N.after_marker(k, st)
  if st.m then return '(' .. N.score(st.m) end
  return '-inf'
end

-- Forgets exceptions of notifications no longer kept; moves the marker over read ids.
function N.compact(k, st)
  for id in pairs(st.r) do
    if redis.call('HEXISTS', k.items, id) == 0 then st.r[id] = nil end
  end
  for id in pairs(st.u) do
    if redis.call('HEXISTS', k.items, id) == 0 then st.u[id] = nil end
  end
  while true do
    local nxt = redis.call('ZRANGEBYSCORE', k.ids, N.after_marker(k, st), '+inf', 'LIMIT', 0, 1)[1]
    if not nxt or not st.r[nxt] then break end
    st.m = nxt
    st.r[nxt] = nil
  end
end

function N.set_read(k, st, id, read)
  if st.m and N.le(id, st.m) then
    if read then st.u[id] = nil else st.u[id] = true end
  elseif read then
    st.r[id] = true
  else
    st.r[id] = nil
  end
  N.compact(k, st)
end

function N.unread(k, st)
  local n = redis.call('ZCOUNT', k.ids, N.after_marker(k, st), '+inf')
  for id in pairs(st.r) do
    if redis.call('HEXISTS', k.items, id) == 1 then n = n - 1 end
  end
  for id in pairs(st.u) do
    if redis.call('HEXISTS', k.items, id) == 1 then n = n + 1 end
  end
  return n
end

-- Whether preferences `p` keep an event of this type, severity (0-2) and module from the user.
function N.muted(p, etype, severity, module)
  if severity == 2 then return false end
  if severity < SEVERITY[p.minSeverity] then return true end
  for _, t in ipairs(p.mutedTypes) do
    if t == etype then return true end
  end
  if type(p.modules) == 'table' and type(module) == 'string' then
    for _, m in ipairs(p.modules) do
      if m == module then return false end
    end
    return true
  end
  return false
end

-- Drops notifications past the retention age or count.
function N.trim(k, now_ms)
  local horizon = string.format('%d', (now_ms - k.retention) * 4096)
  local old = redis.call('ZRANGEBYSCORE', k.ids, '-inf', '(' .. horizon, 'LIMIT', 0, 1000)
  if #old > 0 then
    redis.call('ZREM', k.ids, unpack(old))
    redis.call('HDEL', k.items, unpack(old))
  end
  local extra = redis.call('ZCARD', k.ids) - k.max
  if extra > 0 then
    local popped = redis.call('ZPOPMIN', k.ids, extra)
    for i = 1, #popped, 2 do redis.call('HDEL', k.items, popped[i]) end
  end
end

function N.now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A stats key of the day a notification was published.
function N.stats_key(k, kind, id, etype)
  local key = k.stats[1] .. kind .. k.stats[2] .. math.floor(N.ms(id) / 86400000)
  if etype then key = key .. ':' .. etype end
  return key
end

-- Records that `user` read notification `id` (type from its envelope), at `now_ms`.
function N.count_read(k, user, id, now_ms)
  local envelope = redis.call('HGET', k.items, id)
  if not envelope then return end
  local etype = cjson.decode(envelope).type
  local readers = N.stats_key(k, 'readers', id, etype)
  local ttr = N.stats_key(k, 'ttr', id, etype)
  redis.call('PFADD', readers, user)
  redis.call('LPUSH', ttr, math.floor((now_ms - N.ms(id)) / 1000))
  redis.call('LTRIM', ttr, 0, 999)
  redis.call('PEXPIRE', readers, k.retention + 86400000)
  redis.call('PEXPIRE', ttr, k.retention + 86400000)
end

