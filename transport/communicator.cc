#include "transport/communicator.h"

#include <algorithm>

namespace kvshard {

Status AgreeOnStatus(Communicator& comm, const Status& mine) {
  int failed = mine.ok() ? 0 : 1;
  KVS_RETURN_IF_ERROR(comm.AllReduceMax(&failed));
  if (!failed) return Status::Ok();
  KVS_ASSIGN_OR_RETURN(auto messages, comm.GatherStrings(mine.ok() ? "" : mine.ToString(), 0));
  // Ranks that failed the same way are named together: "ranks 0, 1, 2 (on a, b): message".
  std::vector<std::pair<std::string, std::vector<int>>> groups;
  for (size_t r = 0; r < messages.size(); ++r) {
    if (messages[r].empty()) continue;
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == messages[r]; });
    if (it == groups.end()) {
      groups.push_back({messages[r], {static_cast<int>(r)}});
    } else {
      it->second.push_back(static_cast<int>(r));
    }
  }
  std::string text;
  for (const auto& [message, ranks] : groups) {
    if (!text.empty()) text += "; ";
    if (ranks.size() == 1) {
      text += comm.Where(ranks[0]);
    } else {
      text += "ranks";
      for (size_t i = 0; i < ranks.size(); ++i) text += (i ? ", " : " ") + std::to_string(ranks[i]);
    }
    text += ": " + message;
  }
  // Non-root ranks know only that some rank failed; root holds the whole story.
  if (text.empty()) text = mine.ok() ? "another rank failed (see rank 0)" : mine.ToString();
  return FailedPrecondition("{}", text);
}

}  // namespace kvshard
