"""Translates a Paddle inference program (PP-OCRv4 mobile det's 13 op types) to ONNX with the same weights.

A test helper, so the paddle and onnxruntime engines can run the same real model: paddle2onnx 2.1 cannot read
this program under Paddle 3.3, and no ONNX of these weights ships on PyPI. Run as a script in a subprocess
(Paddle must be in static mode with the legacy program API):
``FLAGS_enable_pir_api=0 python paddle_to_onnx.py MODEL_DIR OUT.onnx``.
"""

import sys
from pathlib import Path

import numpy as np


def convert(model_dir: Path, out: Path) -> None:
    import onnx
    import paddle
    from onnx import TensorProto, helper, numpy_helper

    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    program, feeds, fetches = paddle.static.load_inference_model(str(model_dir / "inference"), exe)
    scope, block = paddle.static.global_scope(), program.global_block()
    nodes, inits, done = [], {}, set()

    def param(name: str, shape=None) -> str:
        key = name if shape is None else f"{name}__{'x'.join(map(str, shape))}"
        if key not in done:
            value = np.array(scope.find_var(name).get_tensor())
            inits[key] = numpy_helper.from_array(value if shape is None else value.reshape(shape), key)
            done.add(key)
        return key

    def is_param(name: str) -> bool:
        return block.var(name).persistable

    def operand(name: str) -> str:
        return param(name) if is_param(name) else name

    for op in block.ops:
        t, a = op.type, (lambda k: op.attr(k))
        if t in ("feed", "fetch"):
            continue
        if t in ("conv2d", "depthwise_conv2d"):
            assert a("padding_algorithm") == "EXPLICIT" and not op.input("Bias")
            p = a("paddings")
            pads = [p[0], p[1], p[0], p[1]] if len(p) == 2 else [p[0], p[2], p[1], p[3]]
            nodes.append(helper.make_node("Conv", [op.input("Input")[0], param(op.input("Filter")[0])],
                                          op.output("Output"), strides=a("strides"), pads=pads,
                                          dilations=a("dilations"), group=a("groups")))
        elif t == "conv2d_transpose":
            assert a("paddings") == [0, 0] and not a("output_size") and not a("output_padding")
            nodes.append(helper.make_node("ConvTranspose", [op.input("Input")[0], param(op.input("Filter")[0])],
                                          op.output("Output"), strides=a("strides"), dilations=a("dilations"),
                                          group=a("groups")))
        elif t == "batch_norm":
            ins = [op.input("X")[0]] + [param(op.input(k)[0]) for k in ("Scale", "Bias", "Mean", "Variance")]
            nodes.append(helper.make_node("BatchNormalization", ins, op.output("Y"), epsilon=a("epsilon")))
        elif t in ("elementwise_add", "elementwise_mul"):
            x, y = op.input("X")[0], op.input("Y")[0]
            rank = lambda n: len(block.var(n).shape)  # noqa: E731
            if a("axis") == 1 and rank(y) == 1 and rank(x) == 4 and is_param(y):  # per-channel bias/scale
                y_in = param(y, (1, np.array(scope.find_var(y).get_tensor()).size, 1, 1))
            else:
                assert a("axis") == -1 or rank(x) == rank(y), (t, x, y, a("axis"))
                y_in = operand(y)
            nodes.append(helper.make_node("Add" if t == "elementwise_add" else "Mul", [operand(x), y_in],
                                          op.output("Out")))
        elif t == "hard_swish":
            assert (a("threshold"), a("scale"), a("offset")) == (6.0, 6.0, 3.0)
            nodes.append(helper.make_node("HardSwish", op.input("X"), op.output("Out")))
        elif t == "hard_sigmoid":
            nodes.append(helper.make_node("HardSigmoid", op.input("X"), op.output("Out"), alpha=a("slope"),
                                          beta=a("offset")))
        elif t in ("relu", "sigmoid"):
            nodes.append(helper.make_node(t.capitalize(), op.input("X"), op.output("Out")))
        elif t == "pool2d":
            assert a("adaptive") and a("ksize") == [1, 1] and a("pooling_type") == "avg"
            nodes.append(helper.make_node("GlobalAveragePool", op.input("X"), op.output("Out")))
        elif t == "nearest_interp_v2":
            assert a("interp_method") == "nearest" and not a("align_corners") and a("out_h") == -1
            scales = f"scales_{len(inits)}"
            inits[scales] = numpy_helper.from_array(np.array([1, 1, *a("scale")], np.float32), scales)
            nodes.append(helper.make_node("Resize", [op.input("X")[0], "", scales], op.output("Out"), mode="nearest",
                                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        elif t == "concat":
            nodes.append(helper.make_node("Concat", op.input("X"), op.output("Out"), axis=a("axis")))
        else:
            raise NotImplementedError(t)

    output = fetches[0].name
    graph = helper.make_graph(
        nodes, "ppocr_det", [helper.make_tensor_value_info(feeds[0], TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", 1, "h", "w"])], list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
