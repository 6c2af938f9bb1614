// See routing.h.
#include "routing.h"

#include <algorithm>
#include <cstring>

#include "json_fields.h"

namespace llmaas::gw {

int HostTable::add_host(const std::string& name, const std::string& address, const sockaddr_storage& addr,
                        socklen_t len) {
  for (size_t i = 0; i < hosts_.size(); ++i)
    if (hosts_[i]->name == name) return static_cast<int>(i);
  auto host = std::make_unique<Host>();
  host->name = name;
  host->address = address;
  host->set_sockaddr(addr, len);
  hosts_.push_back(std::move(host));
  return static_cast<int>(hosts_.size() - 1);
}

void HostTable::add_model(const std::string& model, const std::vector<int>& hosts) {
  models_[model] = static_cast<int>(model_names_.size());
  model_names_.push_back(model);
  model_hosts_.push_back(hosts);
}

int HostTable::model_index(std::string_view model) const {
  auto it = models_.find(std::string(model));
  return it == models_.end() ? -1 : it->second;
}

int HostTable::pick(int model, const uint8_t* affinity_key, const std::vector<int>& tried,
                    const RoutingPolicy& policy) {
  int least = -1, home = -1;
  int64_t least_load = 0;
  uint8_t home_score[8] = {}, score[8];
  for (int index : model_hosts_[model]) {
    Host& h = *hosts_[index];
    if (!h.healthy.load(std::memory_order_relaxed)) continue;
    if (std::find(tried.begin(), tried.end(), index) != tried.end()) continue;
    // Ties (an idle fleet) go round-robin by how often each host was picked, as in Python.
    int64_t load = h.load_tokens();
    if (least < 0 || load < least_load || (load == least_load && h.picks < hosts_[least]->picks)) {
      least = index;
      least_load = load;
    }
    if (affinity_key != nullptr) {
      rendezvous_score(affinity_key, h.name, score);
      if (home < 0 || std::memcmp(score, home_score, sizeof score) > 0) {
        home = index;
        std::memcpy(home_score, score, sizeof score);
      }
    }
  }
  if (least < 0) return -1;
  int chosen = least;
  if (home >= 0 && static_cast<double>(hosts_[home]->load_tokens()) <=
                       static_cast<double>(least_load) * policy.slack_ratio + static_cast<double>(policy.slack_tokens))
    chosen = home;
  hosts_[chosen]->picks += 1;
  return chosen;
}

}  // namespace llmaas::gw
