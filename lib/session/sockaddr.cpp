#include "session/sockaddr.hpp"

#include "session/text.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <cstring>

namespace hvtrace::session {

std::optional<SockAddr> decode_sockaddr(std::string_view raw) {
  if (raw.size() < 2) return std::nullopt;
  const auto u8 = [&](std::size_t i) { return static_cast<unsigned char>(raw[i]); };
  const unsigned family = u8(0) | (u8(1) << 8);   // sa_family: host (little-endian) order
  SockAddr a;
  switch (family) {
    case 1: {   // AF_UNIX
      a.family = "unix";
      std::string_view p = raw.substr(2);
      if (p.size() > 108) p = p.substr(0, 108);
      if (!p.empty() && p[0] == '\0') {
        a.path = "@" + sanitize_utf8(p.substr(1));
        while (!a.path.empty() && a.path.back() == '\0') a.path.pop_back();
      } else {
        a.path = sanitize_utf8(p.substr(0, p.find('\0')));
      }
      return a;
    }
    case 2:     // AF_INET: port (network order), 4 address bytes
      a.family = "ipv4";
      if (raw.size() >= 8) {
        a.port = static_cast<std::uint16_t>((u8(2) << 8) | u8(3));
        a.ip = fmt::format("{}.{}.{}.{}", u8(4), u8(5), u8(6), u8(7));
      } else if (raw.size() >= 4) {
        a.port = static_cast<std::uint16_t>((u8(2) << 8) | u8(3));
      }
      return a;
    case 10: {  // AF_INET6: port, flowinfo, 16 address bytes
      a.family = "ipv6";
      if (raw.size() >= 4) a.port = static_cast<std::uint16_t>((u8(2) << 8) | u8(3));
      if (raw.size() >= 24) {
        unsigned char b[16];
        std::memcpy(b, raw.data() + 8, 16);
        static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (std::memcmp(b, kMapped, 12) == 0) {
          a.ip = fmt::format("{}.{}.{}.{}", b[12], b[13], b[14], b[15]);
        } else {
          char text[INET6_ADDRSTRLEN] = {};
          if (inet_ntop(AF_INET6, b, text, sizeof text) != nullptr) a.ip = text;
        }
      }
      return a;
    }
    default:
      a.family = fmt::format("af{}", family);
      return a;
  }
}

}  // namespace hvtrace::session
