// The Python module fastadv._C. Importing it loads this library, which registers the operators
// (csrc/ops.cpp and the backends) as a side effect; the module offers two functions, fast_op and
// label_range.
//
// fast_op(name, fallback) returns a callable for the registered operator `name`
// ("fastadv::trades_kl"): the same dispatcher call as torch.ops.fastadv.trades_kl.default (every
// dispatch key: autograd, the backends, Python dispatch modes, fake tensors), without the Python
// layers in front of it: torch.ops parses each argument against the schema in general and costs
// several microseconds a call, more than a small op's kernel (`fastadv bench overhead`). The
// callable takes the schema's arguments positionally; each is converted by the kind of its
// schema argument, and a wrong one raises TypeError naming the op and the argument. A fused loss
// (an op with trailing grad_<input> flags: the logits convention) gets the tensors it reads
// contiguous (its kernels' layout; free when they are), and its flags may be left out: each is
// then whether grad mode is on and <input> requires a gradient, what autograd will ask for.
// Other ops get their arguments as they are (the pgd family keeps channels_last layouts). A call with
// a tensor subclass (which may define __torch_function__) or under a TorchFunctionMode goes to
// `fallback`, the torch.ops overload, which honours them. fastadv/ops/_registry.py's Family calls these outside
// torch.compile and the OpOverloads inside it.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Dispatch.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <string>
#include <vector>

namespace {

enum class Kind { kTensor, kOptionalTensor, kFloat, kInt, kBool, kString };

struct FastOp {
  c10::OperatorHandle op;
  std::string name;
  std::vector<Kind> kinds;
  std::vector<std::string> argument_names;
  std::vector<bool> written;       // a Tensor(a!) argument: passed as it is, never copied
  std::vector<int> grad_flag_of;   // for a bool grad_<input>: the position of <input>, else -1
  size_t required;                 // the arguments before the trailing grad_<input> flags
  bool fused_loss;                 // it has such flags (the logits convention)
  size_t returns;
  PyObject* fallback;  // owned

  FastOp(const std::string& qualified, PyObject* fallback_op)
      : op(c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "")),
        name(qualified),
        returns(op.schema().returns().size()),
        fallback(fallback_op) {
    Py_INCREF(fallback);
    for (const auto& argument : op.schema().arguments()) {
      const auto& type = argument.type();
      Kind kind;
      if (type->kind() == c10::TypeKind::TensorType) {
        kind = Kind::kTensor;
      } else if (type->kind() == c10::TypeKind::OptionalType &&
                 type->containedType(0)->kind() == c10::TypeKind::TensorType) {
        kind = Kind::kOptionalTensor;
      } else if (type->kind() == c10::TypeKind::FloatType) {
        kind = Kind::kFloat;
      } else if (type->kind() == c10::TypeKind::IntType) {
        kind = Kind::kInt;
      } else if (type->kind() == c10::TypeKind::BoolType) {
        kind = Kind::kBool;
      } else if (type->kind() == c10::TypeKind::StringType) {
        kind = Kind::kString;
      } else {
        TORCH_CHECK(false, "fast_op: ", qualified, "'s argument ", argument.name(), " has type ", type->str(),
                    ", which fast_op does not convert");
      }
      kinds.push_back(kind);
      argument_names.push_back(argument.name());
      written.push_back(argument.alias_info() != nullptr && argument.alias_info()->isWrite());
      grad_flag_of.push_back(-1);
      if (kind == Kind::kBool && argument.name().rfind("grad_", 0) == 0) {
        for (size_t j = 0; j < argument_names.size(); ++j) {
          if (argument_names[j] == argument.name().substr(5) && kinds[j] == Kind::kTensor) {
            grad_flag_of.back() = static_cast<int>(j);
          }
        }
      }
    }
    required = kinds.size();
    while (required > 0 && grad_flag_of[required - 1] >= 0) --required;
    fused_loss = required < kinds.size();
    for (const auto& result : op.schema().returns()) {
      TORCH_CHECK(result.type()->kind() == c10::TypeKind::TensorType, "fast_op: ", qualified,
                  " returns a non-tensor, which fast_op does not convert");
    }
  }
  ~FastOp() { Py_DECREF(fallback); }

  [[noreturn]] void wrong(size_t i, const char* expected, PyObject* value) const {
    throw torch::TypeError(c10::str(name, ": argument ", argument_names[i], " must be ", expected, ", got ",
                                    Py_TYPE(value)->tp_name));
  }

  void push(torch::jit::Stack& stack, size_t i, PyObject* value) const {
    switch (kinds[i]) {
      case Kind::kOptionalTensor:
        if (value == Py_None) {
          stack.emplace_back();
          return;
        }
        [[fallthrough]];
      case Kind::kTensor: {
        if (!THPVariable_Check(value)) wrong(i, "a Tensor", value);
        const at::Tensor& tensor = THPVariable_Unpack(value);
        stack.emplace_back(fused_loss && !written[i] ? tensor.contiguous() : tensor);
        return;
      }
      case Kind::kFloat:
        if (PyFloat_Check(value)) {
          stack.emplace_back(PyFloat_AS_DOUBLE(value));
        } else if (PyLong_Check(value) && !PyBool_Check(value)) {
          stack.emplace_back(PyLong_AsDouble(value));
        } else {
          wrong(i, "a float", value);
        }
        return;
      case Kind::kInt:
        if (!PyLong_Check(value) || PyBool_Check(value)) wrong(i, "an int", value);
        stack.emplace_back(static_cast<int64_t>(PyLong_AsLongLong(value)));
        return;
      case Kind::kBool:
        if (!PyBool_Check(value)) wrong(i, "a bool", value);
        stack.emplace_back(value == Py_True);
        return;
      case Kind::kString: {
        if (!PyUnicode_Check(value)) wrong(i, "a str", value);
        Py_ssize_t size = 0;
        const char* text = PyUnicode_AsUTF8AndSize(value, &size);
        if (text == nullptr) throw python_error();
        stack.emplace_back(std::string(text, static_cast<size_t>(size)));
        return;
      }
    }
  }
};

const char* const kCapsule = "fastadv.fast_op";

void destroy(PyObject* capsule) { delete static_cast<FastOp*>(PyCapsule_GetPointer(capsule, kCapsule)); }

PyObject* call(PyObject* self, PyObject* const* args, Py_ssize_t count) {
  HANDLE_TH_ERRORS
  const auto* f = static_cast<const FastOp*>(PyCapsule_GetPointer(self, kCapsule));
  const auto n = static_cast<size_t>(count);
  if (n != f->kinds.size() && n != f->required) {
    throw torch::TypeError(c10::str(f->name, " takes ", f->kinds.size(), " arguments (or ", f->required,
                                    " without its trailing grad_<input> flags), got ", n));
  }
  // A tensor subclass (which may define __torch_function__) or an active TorchFunctionMode:
  // torch.ops' path, which honours them.
  bool plain = !at::impl::torch_function_mode_enabled();
  for (size_t i = 0; plain && i < n; ++i) {
    plain = !THPVariable_Check(args[i]) || THPVariable_CheckExact(args[i]);
  }
  if (!plain) return PyObject_Vectorcall(f->fallback, args, n, nullptr);
  torch::jit::Stack stack;
  stack.reserve(std::max(f->kinds.size(), f->returns));
  for (size_t i = 0; i < n; ++i) f->push(stack, i, args[i]);
  if (n < f->kinds.size()) {  // each omitted grad_<input>: whether autograd will want that gradient
    const bool grad_mode = at::GradMode::is_enabled();
    for (size_t i = n; i < f->kinds.size(); ++i) {
      stack.emplace_back(grad_mode && stack[f->grad_flag_of[i]].toTensor().requires_grad());
    }
  }
  {
    pybind11::gil_scoped_release no_gil;
    f->op.callBoxed(stack);
  }
  if (f->returns == 0) Py_RETURN_NONE;
  if (f->returns == 1) return THPVariable_Wrap(std::move(stack[0]).toTensor());
  PyObject* out = PyTuple_New(static_cast<Py_ssize_t>(f->returns));
  if (out == nullptr) return nullptr;
  for (size_t i = 0; i < f->returns; ++i) {
    PyObject* tensor = THPVariable_Wrap(std::move(stack[i]).toTensor());
    if (tensor == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, static_cast<Py_ssize_t>(i), tensor);
  }
  return out;
  END_HANDLE_TH_ERRORS
}

PyMethodDef call_def = {"fast_op_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(call)),
                        METH_FASTCALL, nullptr};

PyObject* fast_op(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* qualified = nullptr;
  PyObject* fallback = nullptr;
  if (!PyArg_ParseTuple(args, "sO", &qualified, &fallback)) return nullptr;
  auto* f = new FastOp(qualified, fallback);
  PyObject* capsule = PyCapsule_New(f, kCapsule, destroy);
  if (capsule == nullptr) {
    delete f;
    return nullptr;
  }
  PyObject* function = PyCFunction_NewEx(&call_def, capsule, nullptr);
  Py_DECREF(capsule);
  return function;
  END_HANDLE_TH_ERRORS
}

// label_range(y): (min, max) of a CPU integer tensor's entries as Python ints, read in one pass
// over its memory (what torch.aminmax and .tolist() cost several microseconds for); y non-empty.
PyObject* label_range(PyObject* /*module*/, PyObject* arg) {
  HANDLE_TH_ERRORS
  if (!THPVariable_Check(arg)) throw torch::TypeError(c10::str("label_range: expected a Tensor"));
  const at::Tensor labels = THPVariable_Unpack(arg).contiguous();
  TORCH_CHECK(labels.is_cpu() && labels.numel() > 0, "label_range: expected a non-empty CPU tensor");
  int64_t low = 0, high = 0;
  AT_DISPATCH_INTEGRAL_TYPES(labels.scalar_type(), "label_range", [&] {
    const scalar_t* data = labels.const_data_ptr<scalar_t>();
    scalar_t lo = data[0], hi = data[0];
    for (int64_t i = 1, n = labels.numel(); i < n; ++i) {
      lo = std::min(lo, data[i]);
      hi = std::max(hi, data[i]);
    }
    low = static_cast<int64_t>(lo);
    high = static_cast<int64_t>(hi);
  });
  return Py_BuildValue("(LL)", static_cast<long long>(low), static_cast<long long>(high));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"fast_op", fast_op, METH_VARARGS,
     "fast_op(name, fallback): a callable for the registered operator `name` without torch.ops' Python layers "
     "(csrc/python.cpp)"},
    {"label_range", label_range, METH_O, "label_range(y): (min, max) of a non-empty CPU integer tensor"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}
