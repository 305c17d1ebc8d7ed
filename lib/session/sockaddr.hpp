// Socket addresses as the guest passed them (connect/bind at entry, accept/getpeername at exit):
// raw struct sockaddr bytes, possibly truncated or lying about their family.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace hvtrace::session {

struct SockAddr {
  std::string family;   // "ipv4", "ipv6", "unix", or "af<N>" for others
  std::string ip;       // ipv4/ipv6: the address as text (an IPv4-mapped IPv6 address as IPv4)
  std::uint16_t port = 0;
  std::string path;     // unix: the path ("@name" for the abstract namespace)
};

// nullopt: too short to hold even its family.
[[nodiscard]] std::optional<SockAddr> decode_sockaddr(std::string_view raw);

}  // namespace hvtrace::session
