// Helpers for the metrics tests: temporary directories, child processes, tiny HTTP gets.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace sbserve::metrics::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A child process whose stdout and stderr go to `log_path`. The destructor sends SIGTERM, waits
// up to 10 s, then SIGKILLs, so no test leaves a process behind.
class Subprocess {
 public:
  Subprocess(const std::vector<std::string>& argv, const std::string& log_path);
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  bool started() const { return pid_ > 0; }
  // The exit code if the process has ended (128 + signal if killed), nullopt while running.
  std::optional<int> Poll();
  // Waits until the process exits or `timeout` passes; the exit code or nullopt on timeout.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // SIGTERM, then SIGKILL after `grace`; returns the exit code.
  int Terminate(std::chrono::milliseconds grace = std::chrono::seconds(10));

 private:
  int pid_ = -1;
  std::optional<int> exit_code_;
};

// Runs argv to completion with stdin from `stdin_path` (empty: /dev/null), capturing stdout and
// stderr together. Returns the exit code, or -1 if it did not finish within `timeout`.
int RunCommand(const std::vector<std::string>& argv, const std::string& stdin_path,
               std::string* output, std::chrono::milliseconds timeout = std::chrono::seconds(60));

bool FileIsExecutable(const std::string& path);
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& contents);

// A TCP port on 127.0.0.1 that was free a moment ago (for programs that need a fixed port).
int PickFreePort();

// GET http://127.0.0.1:port/path. Returns the status (or -1 on a connection error) and fills
// body and content type.
int HttpGet(int port, const std::string& path, std::string* body,
            std::string* content_type = nullptr);

}  // namespace sbserve::metrics::testing
