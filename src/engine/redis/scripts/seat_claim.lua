-- Claims one of a tenant's seats for a connection on one node, atomically against every
-- node's live seats (MAX_CONNECTIONS_PER_TENANT).
-- KEYS[1]: the tenant's seats hash: field <node> = connections held, <node>@ = expiry (ms).
-- ARGV[1]: node id; ARGV[2]: limit; ARGV[3]: seat ttl (ms).
-- Returns 1 (claimed) or 0 (every seat taken; nothing written).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local flat = redis.call('HGETALL', KEYS[1])
local held, expiry = {}, {}
for i = 1, #flat, 2 do
  local field, value = flat[i], tonumber(flat[i + 1]) or 0
  if string.sub(field, -1) == '@' then
    expiry[string.sub(field, 1, -2)] = value
  else
    held[field] = value
  end
end
local total = 0
for node, count in pairs(held) do
  local until_ms = expiry[node]
  if until_ms == nil or until_ms < now then
    -- A node that stopped refreshing (crashed) no longer counts.
    redis.call('HDEL', KEYS[1], node, node .. '@')
  else
    total = total + count
  end
end
if total >= tonumber(ARGV[2]) then
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1] .. '@', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
