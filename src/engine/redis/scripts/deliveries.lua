-- A tenant's delivery queue (apply.lua enqueues at publish). ARGV[1] names the step.
--
-- KEYS: webhooks (hash name -> endpoint JSON), queue (sorted set job -> due ms), job envelopes
-- (hash job -> envelope), job attempts (hash job -> attempt count), notification items (hash
-- id -> envelope), the endpoint's log (list, for finish).
-- A job is 'w|<endpoint>|<event id>'.
--   claim <now> <lease ms> <max> -> {next due | false, job, attempt, envelope, endpoint JSON | '', ...}
--   finish <job> <attempt> <outcome> <retry at> <log entry> <endpoint> <log length> -> 1
--   redeliver <job> <endpoint> <event id> -> 1 | 0
--   digest <job> <window end> <envelope> <ttl ms> -> 1 (KEYS[6] is the window's digest list;
--     the first envelope queues the digest's delivery, due at the window's end)
--   peek -> earliest due | false
-- The '@email' endpoint holds the tenant's email settings; '@digest' jobs use them too.
local step = ARGV[1]

local function earliest()
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #first == 0 then return false end
  return first[2]
end

if step == 'claim' then
  local now, lease, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, max)
  local out = {false}
  for _, job in ipairs(due) do
    -- Leased: not due again until the lease ends, whoever asks.
    redis.call('ZADD', KEYS[2], string.format('%d', now + lease), job)
    local attempt = redis.call('HINCRBY', KEYS[4], job, 1)
    local name = string.match(job, '^w|(.*)|[^|]*$')
    if name == '@digest' then name = '@email' end
    out[#out + 1] = job
    out[#out + 1] = attempt
    out[#out + 1] = redis.call('HGET', KEYS[3], job) or ''
    out[#out + 1] = (name and redis.call('HGET', KEYS[1], name)) or ''
  end
  out[1] = earliest()
  return out
elseif step == 'finish' then
  local job, attempt, outcome = ARGV[2], ARGV[3], ARGV[4]
  if redis.call('HGET', KEYS[4], job) == attempt then
    if outcome == 'retry' then
      redis.call('ZADD', KEYS[2], ARGV[5], job)
    else
      redis.call('ZREM', KEYS[2], job)
      redis.call('HDEL', KEYS[3], job)
      redis.call('HDEL', KEYS[4], job)
      if outcome == 'gone' then
        local hook = redis.call('HGET', KEYS[1], ARGV[7])
        if hook then
          local off = string.gsub(hook, '"enabled":true', '"enabled":false')
          redis.call('HSET', KEYS[1], ARGV[7], off)
        end
      end
    end
  end
  if redis.call('HEXISTS', KEYS[1], ARGV[7]) == 1 then
    redis.call('LPUSH', KEYS[6], ARGV[6])
    redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[8]) - 1)
  end
  return 1
elseif step == 'redeliver' then
  local job = ARGV[2]
  if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
  local envelope = redis.call('HGET', KEYS[5], ARGV[4])
  if not envelope then return 0 end
  redis.call('ZADD', KEYS[2], 0, job)
  redis.call('HSET', KEYS[3], job, envelope)
  redis.call('HSET', KEYS[4], job, 0)
  return 1
elseif step == 'digest' then
  local job = ARGV[2]
  local len = redis.call('RPUSH', KEYS[6], ARGV[4])
  redis.call('PEXPIRE', KEYS[6], ARGV[5])
  if len == 1 then
    redis.call('ZADD', KEYS[2], ARGV[3], job)
    redis.call('HSET', KEYS[3], job, '')
    redis.call('HSET', KEYS[4], job, 0)
  end
  return 1
elseif step == 'peek' then
  return earliest()
end
return redis.error_reply('unknown step ' .. tostring(step))
