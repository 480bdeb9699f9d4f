-- Gives back one seat of a tenant held by one node.
-- KEYS[1]: the tenant's seats hash; ARGV[1]: node id.
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1], ARGV[1] .. '@')
end
return left
