-- Rate limits shared by every node, all or nothing (moltgate, limits.rs).
--
-- The same conservative sub-bucketed sliding window as the in-memory
-- limiter (src/policy/rate.rs): a window W is cut into B buckets of width
-- w = ceil(W / B), and a key admits at time t (bucket k) only while the
-- buckets k-B .. k hold fewer than `limit` units, a span that reaches back
-- at least W. Time is Redis's TIME, so node clocks do not matter.
--
-- KEYS[i]: one limited key's counters, a hash: field `h` the newest bucket
-- counted, `t` the units in buckets h-B .. h, and one field per bucket
-- index with its units. Keeping `t` makes an admission a few field reads
-- and writes, not a sum over B+1 buckets; only a refusal (rare: the node
-- then remembers it, see limits.rs) reads every bucket, for Retry-After.
-- ARGV[1]: B. Then three values per key: limit, w (microseconds), want
--   (1 for one request; more for a lease, which takes what fits, up to want).
-- Returns {1, granted_1, granted_2, ...} when every key admits, after
-- counting them all, or {0, i, retry_us} naming the key that frees up last,
-- having counted nothing.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local B = tonumber(ARGV[1])
local function field(b) return string.format('%d', b) end

-- Moves key i's span to end at bucket k: drops the buckets that left it.
-- Returns the units left in the span and the bucket it now ends at.
local function advance(key, k)
  local ht = redis.call('HMGET', key, 'h', 't')
  local h, total = tonumber(ht[1]), tonumber(ht[2]) or 0
  if not h then return 0, k end
  if k <= h then return total, h end
  if k - B > h then
    redis.call('DEL', key)
    return 0, k
  end
  local leaving = {}
  for b = h - B, k - B - 1 do leaving[#leaving + 1] = field(b) end
  local counts = redis.call('HMGET', key, unpack(leaving))
  for j = 1, #counts do total = total - (tonumber(counts[j]) or 0) end
  redis.call('HDEL', key, unpack(leaving))
  redis.call('HSET', key, 'h', field(k), 't', total)
  return total, k
end

local grants, heads = {}, {}
local worst, worst_i = -1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + (i - 1) * 3])
  local width = tonumber(ARGV[3 + (i - 1) * 3])
  local want = tonumber(ARGV[4 + (i - 1) * 3])
  local total, k = advance(KEYS[i], math.floor(now / width))
  if total < limit then
    grants[i] = math.min(want, limit - total)
    heads[i] = k
  else
    -- Bucket k-B+j-1 leaves the span when bucket k+j begins: find the first
    -- after which one more unit fits.
    local fields = {}
    for b = k - B, k do fields[#fields + 1] = field(b) end
    local counts = redis.call('HMGET', KEYS[i], unpack(fields))
    local remaining, at = total, k + 1 + B
    for j = 1, #counts do
      remaining = remaining - (tonumber(counts[j]) or 0)
      if remaining < limit then
        at = k + j
        break
      end
    end
    local retry = at * width - now
    if retry > worst then worst, worst_i = retry, i end
  end
end
if worst_i > 0 then return {0, worst_i, worst} end
local out = {1}
for i = 1, #KEYS do
  local width = tonumber(ARGV[3 + (i - 1) * 3])
  redis.call('HINCRBY', KEYS[i], field(heads[i]), grants[i])
  redis.call('HINCRBY', KEYS[i], 't', grants[i])
  redis.call('HSET', KEYS[i], 'h', field(heads[i]))
  redis.call('PEXPIRE', KEYS[i], math.ceil(width * (B + 1) / 1000) + 1000)
  out[#out + 1] = grants[i]
end
return out
