#include "publish/nats_util.hpp"

#include "common/result.hpp"

#include <fmt/core.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <string_view>
#include <thread>

namespace hvtrace::publish {

std::string status_text(natsStatus s) {
  const char* last = nats_GetLastError(nullptr);
  std::string t = natsStatus_GetText(s);
  if (last != nullptr && *last != '\0' && std::string_view(last).find(t) == std::string_view::npos) t += fmt::format(" ({})", last);
  return t;
}

natsConnection* connect(const std::vector<std::string>& urls, const std::string& name, int timeout_ms) {
  natsOptions* o = nullptr;
  if (natsOptions_Create(&o) != NATS_OK) throw std::runtime_error("nats: cannot create options");
  std::vector<const char*> c;
  for (const auto& u : urls) c.push_back(u.c_str());
  natsStatus s = natsOptions_SetServers(o, c.data(), static_cast<int>(c.size()));
  if (s == NATS_OK) s = natsOptions_SetName(o, name.c_str());
  if (s == NATS_OK) s = natsOptions_SetTimeout(o, timeout_ms);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(o, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(o, 200);
  if (s == NATS_OK) s = natsOptions_SetNoRandomize(o, false);
  if (s == NATS_OK) s = natsOptions_SetPingInterval(o, 2000);
  if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(o, 2);
  if (s != NATS_OK) {
    natsOptions_Destroy(o);
    throw UserError(fmt::format("NATS URL {}: {}", fmt::join(urls, ","), status_text(s)));
  }
  natsConnection* nc = nullptr;
  s = natsConnection_Connect(&nc, o);
  natsOptions_Destroy(o);
  if (s != NATS_OK)
    throw UserError(fmt::format("cannot reach a NATS server at {}: {} (is nats-server running with JetStream, -js?)", fmt::join(urls, ","),
                                status_text(s)));
  return nc;
}

int ensure_stream(jsCtx* js, natsConnection* nc, const StreamSettings& st, int wait_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  std::string last;
  for (;;) {
    jsStreamInfo* si = nullptr;
    jsErrCode je = static_cast<jsErrCode>(0);
    natsStatus s = js_GetStreamInfo(&si, js, st.name.c_str(), nullptr, &je);
    if (s == NATS_OK) {
      const int r = static_cast<int>(si->Config->Replicas);
      jsStreamInfo_Destroy(si);
      return r;
    }
    if (s == NATS_NOT_FOUND) {
      int replicas = st.replicas;
      if (replicas <= 0) {
        char** servers = nullptr;
        int n = 0;
        if (natsConnection_GetServers(nc, &servers, &n) == NATS_OK) {
          for (int i = 0; i < n; ++i) free(servers[i]);
          free(servers);
        }
        replicas = std::clamp(n, 1, 3);
      }
      jsStreamConfig sc;
      jsStreamConfig_Init(&sc);
      const char* subjects[] = {"hvtrace.>"};
      sc.Name = st.name.c_str();
      sc.Description = "hvtrace session events and files (docs/publish.md)";
      sc.Subjects = subjects;
      sc.SubjectsLen = 1;
      sc.Retention = js_LimitsPolicy;
      sc.Storage = js_FileStorage;
      sc.Discard = js_DiscardOld;
      sc.MaxAge = st.max_age_s * 1'000'000'000LL;
      sc.MaxBytes = st.max_bytes;
      sc.Replicas = replicas;
      sc.Duplicates = st.duplicate_window_s * 1'000'000'000LL;
      s = js_AddStream(&si, js, &sc, nullptr, &je);
      if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return replicas;
      }
    }
    last = fmt::format("{} (JetStream error {})", status_text(s), static_cast<int>(je));
    // No JetStream API answers at all: a server without JetStream (give a forming cluster 3 s).
    if (s == NATS_NO_RESPONDERS && std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms) - deadline > std::chrono::seconds(3))
      break;
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  throw UserError(fmt::format("NATS JetStream stream '{}' is not available: {} (is JetStream enabled on the server, -js?)", st.name, last));
}

}  // namespace hvtrace::publish
