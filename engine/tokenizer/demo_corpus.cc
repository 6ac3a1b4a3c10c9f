// The text the demo tokenizer is trained on: plain English and a little C++ and Python, so that
// a generated model's tokens decode to readable words and code fragments.
#include "engine/tokenizer/bpe_trainer.h"

namespace sbserve::tokenizer_internal {

std::string_view DemoTrainingText() {
  static constexpr std::string_view kText = R"TEXT(
The server reads a request, turns the text into tokens, and the model answers one token at a time.
Each answer is streamed back to the client as soon as it is ready, so the user sees the words appear
while the model is still thinking about the rest of the sentence. When the request is finished, the
server frees the memory that the request was using and reports how long every step of the work took.

There are many ways to write a good program, but the best ones are small, clear and easy to test.
A function should do one thing and do it well. Names should tell the reader what a value means,
not how it was computed. Comments should explain why the code is written the way it is, because the
code itself already says what it does. When something goes wrong, the error message should name
the file, the line and the value that was wrong, so that the person reading it can fix the problem
without having to guess.

In the morning the city is quiet. The first trains leave the station before the sun comes up, and
the bakers have already been working for hours. By eight o'clock the streets are full of people
walking to work, children going to school, and cyclists weaving between the buses. At noon the
parks fill with office workers eating lunch in the sun. In the evening the lights come on one by
one, the restaurants open their doors, and the sound of music drifts out of the open windows.

Language models learn to predict the next word from the words that came before it. They are
trained on large collections of text, and they learn grammar, facts and style from that text.
A model with stick-breaking attention decides, for every earlier word, how much of the remaining
attention to give it, starting from the most recent word and moving back in time. This gives the
model a natural preference for recent words without any position embedding at all.

Questions and answers:
Q: What is the capital of France? A: The capital of France is Paris.
Q: How many days are there in a week? A: There are seven days in a week.
Q: What do you call a baby cat? A: A baby cat is called a kitten.
Q: Which planet is the largest? A: Jupiter is the largest planet in the solar system.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 16 20 32 42 64 100 128 256 512 1000 1024 2024 2025 2026.
Punctuation: "quoted", 'single', (round), [square], {curly}, a-b, a_b, a.b, a/b, a:b; a? a! ...

#include <cstdint>
#include <string>
#include <vector>

// Returns the sum of the values in the vector.
int64_t Sum(const std::vector<int64_t>& values) {
  int64_t total = 0;
  for (int64_t v : values) {
    total += v;
  }
  return total;
}

class Counter {
 public:
  explicit Counter(int start) : value_(start) {}
  void Increment() { ++value_; }
  int value() const { return value_; }

 private:
  int value_ = 0;
};

int main(int argc, char** argv) {
  std::vector<int64_t> values = {1, 2, 3, 4, 5};
  if (argc > 1) {
    values.push_back(std::stoll(argv[1]));
  }
  std::printf("sum = %lld\n", static_cast<long long>(Sum(values)));
  return 0;
}

def read_lines(path):
    """Returns the non-empty lines of a text file."""
    with open(path, "r", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class Tokenizer:
    def __init__(self, vocab):
        self.vocab = vocab
        self.inverse = {v: k for k, v in vocab.items()}

    def encode(self, text):
        return [self.vocab[word] for word in text.split() if word in self.vocab]

    def decode(self, ids):
        return " ".join(self.inverse[i] for i in ids)


if __name__ == "__main__":
    for number in range(10):
        if number % 2 == 0:
            print(f"{number} is even")
        else:
            print(f"{number} is odd")
)TEXT";
  return kText;
}

}  // namespace sbserve::tokenizer_internal
