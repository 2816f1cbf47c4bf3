"""Writes one small det-shaped network twice, with the same weights: as a Paddle inference model and as ONNX.

Run as a script in a subprocess (it switches Paddle to static mode): ``python twin_models.py OUT_DIR``.
The network: conv3x3(3->8, stride 2) + BN + ReLU -> conv1x1(8->1) -> 2x nearest upsample -> sigmoid, so its
output is N x 1 x H x W like a DB head's.
"""

import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> None:
    import onnx
    import paddle
    from onnx import TensorProto, helper, numpy_helper

    paddle.enable_static()
    paddle.seed(0)
    main_prog, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main_prog, startup):
        x = paddle.static.data("x", [-1, 3, -1, -1], "float32")
        conv1 = paddle.nn.Conv2D(3, 8, 3, stride=2, padding=1)
        bn = paddle.nn.BatchNorm2D(8)
        conv2 = paddle.nn.Conv2D(8, 1, 1)
        y = paddle.nn.functional.sigmoid(
            paddle.nn.functional.interpolate(conv2(paddle.nn.functional.relu(bn(conv1(x)))), scale_factor=2,
                                             mode="nearest"))
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "gamma": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "beta": rng.standard_normal(8).astype(np.float32) * 0.1,
        "mean": rng.standard_normal(8).astype(np.float32) * 0.1,
        "var": rng.uniform(0.5, 2.0, 8).astype(np.float32),
        "w2": rng.standard_normal((1, 8, 1, 1)).astype(np.float32),
        "b2": np.array([-0.5], np.float32),
    }
    scope = paddle.static.global_scope()
    for param, key in ((conv1.weight, "w1"), (conv1.bias, "b1"), (bn.weight, "gamma"), (bn.bias, "beta"),
                       (bn._mean, "mean"), (bn._variance, "var"), (conv2.weight, "w2"), (conv2.bias, "b2")):
        scope.find_var(param.name).get_tensor().set(weights[key], paddle.CPUPlace())
    paddle_dir = out / "paddle"
    paddle_dir.mkdir(parents=True, exist_ok=True)
    paddle.static.save_inference_model(str(paddle_dir / "inference"), [x], [y], exe, program=main_prog)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Resize", ["c2", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Sigmoid", ["u"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    graph = helper.make_graph(nodes, "twin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, out / "twin.onnx")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
