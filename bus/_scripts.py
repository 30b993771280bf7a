"""Lua scripts of RedisStreamBus. Each runs atomically; each validates before its first write,
so an error leaves nothing half-done."""

from __future__ import annotations

__all__ = ["CLAIM_KEY", "CLAIM_KEYS", "COMMIT", "DEAD_LETTER"]

# ARGV: ttl_ms, n_items, n_groups, group1..groupN, then per item two arguments:
#   "input_key_index,group_index,dedupe_key_index (0 = none),n_appends", entry_id,
#   then per append: stream_key_index, maxlen ("" = none), n_fields, name1, value1, ...
# Returns one integer per item: 1 = effects written and acked, 0 = duplicate, only acked.
COMMIT = """
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
local ng = tonumber(ARGV[3])
local pos = 4 + ng
local checked = {}
local items = {}
local function check(k)
  if not checked[k] then
    local t = redis.call('TYPE', k)['ok']
    if t ~= 'stream' and t ~= 'none' then
      return 'WRONGTYPE ' .. k .. ' holds a ' .. t .. ', not a stream'
    end
    checked[k] = true
  end
  return nil
end
for i = 1, n do
  local ki, gi, di, na = string.match(ARGV[pos], '^(%d+),(%d+),(%d+),(%d+)$')
  local item = {KEYS[tonumber(ki)], ARGV[3 + tonumber(gi)], ARGV[pos + 1], tonumber(di), {}}
  local err = check(item[1])
  if err then return redis.error_reply(err) end
  na = tonumber(na)
  pos = pos + 2
  for j = 1, na do
    local k = KEYS[tonumber(ARGV[pos])]
    err = check(k)
    if err then return redis.error_reply(err) end
    local nf = tonumber(ARGV[pos + 2])
    item[5][j] = {k, ARGV[pos + 1], pos + 3, nf}
    pos = pos + 3 + 2 * nf
  end
  items[i] = item
end
local out = {}
for i = 1, n do
  local it = items[i]
  local fresh = 1
  if it[4] > 0 then
    if not redis.call('SET', KEYS[it[4]], '1', 'NX', 'PX', ttl) then fresh = 0 end
  end
  if fresh == 1 then
    for _, a in ipairs(it[5]) do
      local args = {'XADD', a[1]}
      if a[2] ~= '' then
        args[#args + 1] = 'MAXLEN'
        args[#args + 1] = '~'
        args[#args + 1] = a[2]
      end
      args[#args + 1] = '*'
      for f = a[3], a[3] + 2 * a[4] - 1 do args[#args + 1] = ARGV[f] end
      redis.call(unpack(args))
    end
  end
  redis.call('XACK', it[1], it[2], it[3])
  out[i] = fresh
end
return out
"""

# KEYS: dead_stream, source_stream. ARGV: group, entry_id, name1, value1, ...
DEAD_LETTER = """
for _, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. k .. ' holds a ' .. t .. ', not a stream')
  end
end
local args = {'XADD', KEYS[1], '*'}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return id
"""

# KEYS: key. ARGV: value, ttl_ms. Returns nil if set now, else the existing value.
CLAIM_KEY = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""

# KEYS: the keys; ARGV: ttl_ms, value1..valueN. Returns per key: false if set now, else the existing value.
CLAIM_KEYS = """
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'PX', ARGV[1]) then
    out[i] = false
  else
    out[i] = redis.call('GET', KEYS[i])
  end
end
return out
"""
