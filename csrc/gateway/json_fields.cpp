// scan_request and scan_usage (json_fields.h): one pass of JsonReader over the body, reading the
// fields the Python path reads and validating everything else.
#include "json_fields.h"

#include <algorithm>

#include "json_reader.h"

namespace llmaas::gw {
namespace {

// Past this many top-level keys a body is unsupported: duplicate detection compares each key with
// the ones before it, and real requests carry a few dozen at most.
constexpr int kMaxTopLevelKeys = 64;

// An object key, unescaped; keys longer than any field we read are marked too long.
struct KeyName {
  char text[32];
  size_t size = 0;
  bool too_long = false;

  void raw(const char* bytes, size_t n, int64_t) { append(bytes, n); }
  void code_point(uint32_t cp) {
    char utf8[4];
    append(utf8, static_cast<size_t>(encode_utf8(cp, utf8)));
  }
  void append(const char* bytes, size_t n) {
    if (too_long || n > sizeof(text) - size) {
      too_long = true;
      return;
    }
    std::copy(bytes, bytes + n, text + size);
    size += n;
  }
  // A too-long key reads as one no field has ("" is not a field name).
  std::string_view view() const { return too_long ? std::string_view() : std::string_view(text, size); }
};

struct StringSink {
  std::string* out;
  void raw(const char* bytes, size_t n, int64_t) { out->append(bytes, n); }
  void code_point(uint32_t cp) {
    char utf8[4];
    out->append(utf8, static_cast<size_t>(encode_utf8(cp, utf8)));
  }
};

// The byte offset in a valid UTF-8 run where its code point number `count` (from 0) begins.
size_t offset_of_code_point(const char* bytes, size_t size, int64_t count) {
  int64_t seen = 0;
  for (size_t i = 0; i < size; ++i) {
    if ((static_cast<uint8_t>(bytes[i]) & 0xC0) != 0x80 && seen++ == count) return i;
  }
  return size;
}

// One candidate prompt text (the messages' contents or the prompt string), fed as it is read: its
// length in code points and the blake2b-16 of its first `limit` code points, i.e. prefix_key's
// input text[:limit].
class PromptText {
 public:
  explicit PromptText(int64_t limit) : prefix_(16), limit_(limit) {}

  void raw(const char* bytes, size_t size, int64_t chars) {
    if (chars_ < limit_) {
      const int64_t room = limit_ - chars_;
      prefix_.update(bytes, chars <= room ? size : offset_of_code_point(bytes, size, room));
    }
    chars_ += chars;
  }
  void code_point(uint32_t cp) {
    if (chars_ < limit_) {
      char utf8[4];
      prefix_.update(utf8, static_cast<size_t>(encode_utf8(cp, utf8)));
    }
    ++chars_;
  }
  int64_t chars() const { return chars_; }
  void digest(uint8_t out[16]) { prefix_.final(out); }

 private:
  Blake2b prefix_;
  int64_t limit_;
  int64_t chars_ = 0;
};

bool read_null(JsonReader& reader) {
  int literal;
  return reader.read_literal(&literal) && literal == 2;
}

// Walks the object at the cursor: on_field(name, raw) is called with the cursor at each value, which
// it must read; raw is the key as written (escapes undecoded).
template <class OnField>
bool read_object(JsonReader& reader, OnField&& on_field) {
  if (!reader.consume('{')) return false;
  if (reader.consume('}')) return true;
  do {
    KeyName key;
    reader.peek();
    const char* start = reader.position();
    if (!reader.read_string(key)) return false;
    const std::string_view raw(start + 1, static_cast<size_t>(reader.position() - start - 2));
    if (!reader.consume(':') || !on_field(key.view(), raw)) return false;
  } while (reader.consume(','));
  return reader.consume('}');
}

// An int field of RoutingFields: an integer in int64's range, or null (has = false).
bool read_optional_int(JsonReader& reader, bool* has, int64_t* value) {
  *has = reader.peek() != 'n';
  return *has ? reader.read_int64(value) : read_null(reader);
}

enum Field : unsigned {
  kModel = 1 << 0, kStream = 1 << 1, kStreamOptions = 1 << 2, kMaxTokens = 1 << 3,
  kMaxCompletionTokens = 1 << 4, kN = 1 << 5, kMessages = 1 << 6, kPrompt = 1 << 7, kOther = 0,
};

Field field_of(std::string_view name) {
  if (name == "model") return kModel;
  if (name == "stream") return kStream;
  if (name == "stream_options") return kStreamOptions;
  if (name == "max_tokens") return kMaxTokens;
  if (name == "max_completion_tokens") return kMaxCompletionTokens;
  if (name == "n") return kN;
  if (name == "messages") return kMessages;
  if (name == "prompt") return kPrompt;
  return kOther;
}

class RequestScanner {
 public:
  RequestScanner(std::string_view body, int64_t affinity_min_chars, RequestFields* out)
      : reader_(body), out_(out), messages_text_(affinity_min_chars), prompt_text_(affinity_min_chars),
        affinity_min_chars_(affinity_min_chars) {}

  bool scan() {
    auto on_field = [this](std::string_view name, std::string_view raw) { return read_field(name, raw); };
    if (!read_object(reader_, on_field) || !reader_.at_end() || !(seen_ & kModel)) return false;
    // _prompt_text: the messages when present (even empty), else the prompt string, else "".
    PromptText& text = has_messages_ ? messages_text_ : prompt_text_;
    out_->prompt_chars = text.chars();
    out_->has_affinity = text.chars() >= affinity_min_chars_;
    if (out_->has_affinity) text.digest(out_->affinity_key);
    return true;
  }

 private:
  bool read_field(std::string_view name, std::string_view raw) {
    if (!remember_key(raw)) return false;
    const Field field = field_of(name);
    if (field & seen_) return false;  // the same field spelled with different escapes
    seen_ |= field;
    int literal;
    switch (field) {
      case kModel: {
        StringSink sink{&out_->model};
        return reader_.read_string(sink);
      }
      case kStream:
        if (!reader_.read_literal(&literal)) return false;
        out_->stream = literal == 1;
        return true;
      case kStreamOptions: return reader_.peek() == 'n' ? read_null(reader_) : read_stream_options();
      case kMaxTokens: return read_optional_int(reader_, &out_->has_max_tokens, &out_->max_tokens);
      case kMaxCompletionTokens:
        return read_optional_int(reader_, &out_->has_max_completion_tokens, &out_->max_completion_tokens);
      case kN: return read_optional_int(reader_, &out_->has_n, &out_->n);
      case kMessages: return reader_.peek() == 'n' ? read_null(reader_) : read_messages();
      case kPrompt:
        if (reader_.peek() == 'n') return read_null(reader_);
        has_prompt_ = true;
        return reader_.read_string(prompt_text_);  // token ids and lists of prompts: unsupported
      case kOther: return reader_.skip_value(1);
    }
    return false;
  }

  // false for a key seen before (raw spelling) or one key too many.
  bool remember_key(std::string_view raw) {
    if (num_keys_ == kMaxTopLevelKeys) return false;
    if (std::find(keys_, keys_ + num_keys_, raw) != keys_ + num_keys_) return false;
    keys_[num_keys_++] = raw;
    return true;
  }

  bool read_stream_options() {
    return read_object(reader_, [this](std::string_view name, std::string_view) {
      if (name != "include_usage") return reader_.skip_value(2);
      int literal;
      if (!reader_.read_literal(&literal)) return false;
      out_->include_usage = literal == 1;  // a repeated key: the last wins, as in msgspec
      return true;
    });
  }

  bool read_messages() {
    has_messages_ = true;
    if (!reader_.consume('[')) return false;
    if (reader_.consume(']')) return true;
    do {
      if (!read_message()) return false;
    } while (reader_.consume(','));
    return reader_.consume(']');
  }

  // One message: role a string or null, content a string or null (each string content is a part of
  // the text, parts joined by "\0"); content parts are unsupported.
  bool read_message() {
    bool has_content = false;
    return read_object(reader_, [this, &has_content](std::string_view name, std::string_view) {
      if (name == "role") {
        SkipSink skip;
        return reader_.peek() == '"' ? reader_.read_string(skip) : read_null(reader_);
      }
      if (name != "content") return reader_.skip_value(3);
      if (has_content) return false;  // msgspec keeps the last one, but its text is already hashed
      has_content = true;
      if (reader_.peek() != '"') return read_null(reader_);
      if (num_parts_++ > 0) messages_text_.code_point(0);
      return reader_.read_string(messages_text_);
    });
  }

  JsonReader reader_;
  RequestFields* out_;
  PromptText messages_text_;
  PromptText prompt_text_;
  int64_t affinity_min_chars_;
  unsigned seen_ = 0;
  bool has_messages_ = false;
  bool has_prompt_ = false;
  int64_t num_parts_ = 0;
  std::string_view keys_[kMaxTopLevelKeys];
  int num_keys_ = 0;
};

// A Usage int field: msgspec's `int = 0` refuses null, floats and bools.
bool read_count(JsonReader& reader, int64_t* out) { return reader.read_int64(out); }

// prompt_tokens_details or completion_tokens_details: null or an object whose `count_name` is read.
bool read_details(JsonReader& reader, std::string_view count_name, int64_t* count) {
  *count = 0;  // a repeated details object replaces the previous one
  if (reader.peek() == 'n') return read_null(reader);
  return read_object(reader, [&](std::string_view name, std::string_view) {
    return name == count_name ? read_count(reader, count) : reader.skip_value(3);
  });
}

bool read_usage(JsonReader& reader, UsageCounts* counts) {
  *counts = UsageCounts{};  // a repeated usage object replaces the previous one
  int64_t total;
  return read_object(reader, [&](std::string_view name, std::string_view) {
    if (name == "prompt_tokens") return read_count(reader, &counts->prompt_tokens);
    if (name == "completion_tokens") return read_count(reader, &counts->completion_tokens);
    if (name == "total_tokens") return read_count(reader, &total);
    if (name == "prompt_tokens_details") return read_details(reader, "cached_tokens", &counts->cached_tokens);
    if (name == "completion_tokens_details")
      return read_details(reader, "reasoning_tokens", &counts->reasoning_tokens);
    return reader.skip_value(2);
  });
}

}  // namespace

bool scan_request(std::string_view body, int64_t affinity_min_chars, RequestFields* out) {
  if (affinity_min_chars < 0) return false;
  std::string model = std::move(out->model);  // keeps its capacity across requests
  model.clear();
  *out = RequestFields{};
  out->model = std::move(model);
  return RequestScanner(body, affinity_min_chars, out).scan();
}

bool scan_usage(std::string_view body, UsageCounts* out) {
  JsonReader reader(body);
  UsageCounts counts;
  bool has_usage = false;  // the last "usage" key decides, as in msgspec
  const bool valid = read_object(reader, [&](std::string_view name, std::string_view) {
    if (name == "usage") {
      has_usage = reader.peek() != 'n';
      return has_usage ? read_usage(reader, &counts) : read_null(reader);
    }
    if (name == "choices" && reader.peek() != '[') return false;  // list[Raw]: null is refused too
    return reader.skip_value(1);
  });
  if (!valid || !reader.at_end() || !has_usage) return false;
  *out = counts;
  return true;
}

void rendezvous_score(const uint8_t key[16], std::string_view host_name, uint8_t out[8]) {
  Blake2b score(8);
  score.update(key, 16);
  score.update(host_name.data(), host_name.size());
  score.final(out);
}

}  // namespace llmaas::gw
