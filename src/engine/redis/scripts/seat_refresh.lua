-- Sets what one node holds of a tenant's seats and keeps them alive for another ttl.
-- KEYS[1]: the tenant's seats hash; ARGV[1]: node id; ARGV[2]: connections; ARGV[3]: ttl (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. '@', now + ttl)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
