"""The Lua passdb of the proxy, kept as a string so that the renderer stays pure and packaging needs no data files."""

from typing import Final

PASSDB_LUA: Final = r"""-- Rendered by mailshard: the proxy's passdb. Routes a login to the current master of its shard.
-- It re-reads the route file on every lookup (a few lines: one per slot run and override), so a
-- new table takes effect at the next login, with no cache and no mtime granularity involved.
local ROUTES = "@ROUTES@"

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
local M = 0xffffffff

local function rrot(x, n)
  return ((x >> n) | (x << (32 - n))) & M
end

-- The first two 32-bit words of SHA-256(msg).
local function sha256_head(msg)
  local H = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
  local bits = #msg * 8
  msg = msg .. "\128" .. string.rep("\0", (55 - #msg) % 64) .. string.pack(">I8", bits)
  for chunk = 1, #msg, 64 do
    local w = {}
    for i = 0, 15 do
      w[i] = string.unpack(">I4", msg, chunk + i * 4)
    end
    for i = 16, 63 do
      local a, b = w[i - 15], w[i - 2]
      local s0 = rrot(a, 7) ~ rrot(a, 18) ~ (a >> 3)
      local s1 = rrot(b, 17) ~ rrot(b, 19) ~ (b >> 10)
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M
    end
    local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
    for i = 0, 63 do
      local t1 = (h + (rrot(e, 6) ~ rrot(e, 11) ~ rrot(e, 25)) + ((e & f) ~ ((~e) & g)) + K[i + 1] + w[i]) & M
      local t2 = ((rrot(a, 2) ~ rrot(a, 13) ~ rrot(a, 22)) + ((a & b) ~ (a & c) ~ (b & c))) & M
      h, g, f, e, d, c, b, a = g, f, e, (d + t1) & M, c, b, a, (t1 + t2) & M
    end
    H[1], H[2], H[3], H[4] = (H[1] + a) & M, (H[2] + b) & M, (H[3] + c) & M, (H[4] + d) & M
    H[5], H[6], H[7], H[8] = (H[5] + e) & M, (H[6] + f) & M, (H[7] + g) & M, (H[8] + h) & M
  end
  return H[1], H[2]
end

-- mailshard.api.routing.slot_of for a canonical name: first 8 bytes big-endian, unsigned, mod count.
local function slot_of(canonical, count)
  local hi, lo = sha256_head(canonical)
  local x = (hi << 32) | lo
  if x >= 0 then
    return x % count
  end
  return (((x >> 1) % count) * 2 + (x & 1)) % count
end

local PORT_FIELD = { imap = 1, pop3 = 2, lmtp = 3, sieve = 4 }

local function temporary(reason)
  dovecot.i_info("mailshard-proxy: refusing temporarily: " .. reason)
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, reason
end

local function target(req, spec)
  local action, rest = spec:match("^(%a+) ?(.*)$")
  if action ~= "serve" then
    return temporary(rest)
  end
  local host, ports = rest:match("^(%S+) (.*)$")
  local list = {}
  for port in ports:gmatch("%d+") do
    list[#list + 1] = port
  end
  local port = list[PORT_FIELD[req.service] or 1]
  return dovecot.auth.PASSDB_RESULT_OK, { proxy = "y", nopassword = "y", host = host, port = port }
end

function auth_passdb_lookup(req)
  local user = req.user
  if user:find("[\128-\255]") then
    -- NFC and full Unicode lower-casing are not available here; see mailshard.proxy.render.
    return temporary("non-ASCII login " .. user .. " cannot be routed by this proxy")
  end
  local canonical = user:lower()
  local file = io.open(ROUTES, "r")
  if file == nil then
    return temporary("no route file " .. ROUTES .. " yet")
  end
  local count, override, runs = nil, nil, {}
  for line in file:lines() do
    local key, value = line:match("^(%a+) (.*)$")
    if key == "slots" then
      count = tonumber(value)
    elseif key == "run" then
      runs[#runs + 1] = value
    elseif key == "user" then
      local name, spec = value:match("^(%S+) (.*)$")
      if name == canonical then
        override = spec
      end
    end
  end
  file:close()
  if override ~= nil then
    return target(req, override)
  end
  if count == nil then
    return temporary("route file " .. ROUTES .. " has no slot count")
  end
  local slot = slot_of(canonical, count)
  for _, run in ipairs(runs) do
    local first, last, spec = run:match("^(%d+) (%d+) (.*)$")
    if slot >= tonumber(first) and slot <= tonumber(last) then
      return target(req, spec)
    end
  end
  return temporary("slot " .. slot .. " is not in the route file")
end

function auth_passdb_verify(req, password)
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "the proxy never verifies passwords"
end
"""
