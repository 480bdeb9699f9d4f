-- The tenant's events after an id (resume, gap filling). The id must be in the stream: an id
-- that was trimmed, never existed, or belongs to a history lost with a Redis restart cannot be
-- resumed from, and the reply says which (Centrifugo's epoch check, by exact match).
-- With ARGV[3] = 'order' (a node's own gap fill) an absent id is enough when the history
-- reaches back to it: everything after it by id order follows.
-- KEYS: history stream. ARGV: the id ('-' for everything), max entries, 'exact' | 'order'.
-- Reply: {'ok', id1, event1, …} | {'miss', first, last} | {'empty'}.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return {'empty'} end
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local start = '-'
if ARGV[1] ~= '-' then
  local present = #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0
  local covered = ARGV[3] == 'order' and not before(ARGV[1], first[1][1])
  if not present and not covered then
    local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
    return {'miss', first[1][1], last[1][1]}
  end
  start = '(' .. ARGV[1]
end
local out = {'ok'}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'event' then
      table.insert(out, entry[1])
      table.insert(out, fields[i + 1])
    end
  end
end
return out
