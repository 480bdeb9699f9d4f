-- Reads a tenant's document, usage and notice state in one step, as JSON.
-- KEYS: document, usage hash, notice hash.
local doc = redis.call('GET', KEYS[1])
if doc == false then doc = cjson.null end
return cjson.encode({doc = doc, usage = redis.call('HGETALL', KEYS[2]), notices = redis.call('HGETALL', KEYS[3])})
