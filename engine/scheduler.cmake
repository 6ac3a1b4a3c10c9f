# The serving engine: Engine API, scheduler/packer, stop-string matching. Included from
# engine/CMakeLists.txt after sb_engine is defined.
add_library(sb_scheduler STATIC
  ${CMAKE_CURRENT_LIST_DIR}/engine.cc
  ${CMAKE_CURRENT_LIST_DIR}/capacity.cc
  ${CMAKE_CURRENT_LIST_DIR}/scheduler.cc
  ${CMAKE_CURRENT_LIST_DIR}/stop_matcher.cc)
target_link_libraries(sb_scheduler PUBLIC sb_engine absl::status absl::statusor absl::strings absl::time
  absl::cord Threads::Threads)
target_compile_options(sb_scheduler PRIVATE -Wall -Wextra)
if(TARGET sb_tokenizer)
  target_sources(sb_scheduler PRIVATE ${CMAKE_CURRENT_LIST_DIR}/request_tokenizer.cc)
  target_link_libraries(sb_scheduler PUBLIC sb_tokenizer)
endif()
