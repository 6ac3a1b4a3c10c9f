#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
namespace sbserve { namespace { TEST(Placeholder, Builds) {} } }
