// Containment of a guest (a honeypot must not become an attack platform). Every guest runs on
// QEMU user networking with restrict=on: it reaches nothing on the host or beyond (10.0.2.2, the
// DNS proxy 10.0.2.3 and every outside address are unreachable); only the host's forwards into
// the guest (SSH) work. What a guest may reach is forwarded explicitly: a GuestForward connects
// the guest's TCP connections to one address of QEMU's user network (e.g. 10.0.2.100:80) to a
// server on the host's loopback (e.g. the test's HTTP server on 127.0.0.1:PORT).
//
// How: QEMU's `guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:PORT` form opens a single chardev
// connection when QEMU starts (QEMU fails if nothing listens yet) and serves exactly one guest
// connection over the VM's life (measured with QEMU 10.0.2: a second wget hangs). So hvtrace uses
// the per-connection form, `guestfwd=tcp:10.0.2.100:80-cmd:<hvtrace> vm relay 127.0.0.1 PORT`:
// QEMU runs the relay for every guest connection with that connection as stdin/stdout, and the
// relay copies bytes to and from the host server (half-closes passed on) and exits.
#pragma once

#include "common/result.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace hvtrace::vm {

struct GuestForward {
  std::string guest_addr = "10.0.2.100";  // in QEMU's user network 10.0.2.0/24, not a reserved address
  std::uint16_t guest_port = 80;
  std::string host_addr = "127.0.0.1";    // loopback only (127.0.0.0/8)
  std::uint16_t host_port = 0;
};

// "tcp:GUEST_ADDR:GUEST_PORT-HOST_ADDR:HOST_PORT", the host side also as QEMU spells it
// ("...-tcp:127.0.0.1:PORT"); "tcp:" in front may be left out. Host "localhost" means 127.0.0.1.
// Errors say what is accepted.
[[nodiscard]] Result<GuestForward> parse_guest_forward(std::string_view spec);
// Checks a forward built in code the same way (loopback target, guest address inside
// 10.0.2.0/24 and not one QEMU or the guest uses: .0 .2 .3 .15 .255, ports not 0).
[[nodiscard]] Result<void> validate_guest_forward(const GuestForward& f);
// "tcp:10.0.2.100:80-127.0.0.1:8080" (what parse_guest_forward reads back).
[[nodiscard]] std::string guest_forward_spec(const GuestForward& f);

// The relay QEMU runs per guest connection: stdin/stdout are the guest's connection (a socket);
// connects to host_addr:host_port (loopback only, checked again here) and copies both ways until
// both sides are done. Writes nothing to stderr (QEMU hands the relay the guest connection there
// too). Returns the process exit status: 0, or 1 if the host server could not be reached.
int run_guest_forward_relay(std::string_view host_addr, std::uint16_t host_port);

}  // namespace hvtrace::vm
