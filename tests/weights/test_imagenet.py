"""Tests for cascaded_lift.weights.imagenet and `cascaded-lift-weights` (weights/cli.py).

Real files throughout: a small torchvision-named ResNet saved with torch.save, downloads from an HTTP
server on 127.0.0.1 started here (one route announces more bytes than it sends), the cache folder from
$CASCADED_LIFT_CACHE. The expected hash of the small file is given the way a user would (sha256= /
--sha256), never by editing the registry.
"""

import hashlib
import http.server
import pathlib
import re
import socket
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift.configs import h36m
from cascaded_lift.errors import ConfigError, UserError
from cascaded_lift.models import ResNet
from cascaded_lift.models.build import variables_template
from cascaded_lift.weights import cli, convert, imagenet

torch = pytest.importorskip("torch")
REPO = pathlib.Path(__file__).resolve().parents[2]
RESNET = ResNet(50, width=8, stage_sizes=(1, 1, 1, 1))  # torchvision's names and layouts, 1/8 wide, 4 blocks


def _template():
  return jax.eval_shape(lambda k: RESNET.init(k, jnp.zeros((1, 32, 32, 3)), train=False), jax.random.key(0))


def _random_variables(seed: int = 0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (np.abs(rng.normal(size=s.shape)) + 0.5).astype(s.dtype), _template())


@pytest.fixture(scope="module")
def small_pth(tmp_path_factory) -> tuple[pathlib.Path, dict[str, np.ndarray], str]:
  """(a .pth as torchvision ships one: names, fc.*, int64 counters; its arrays; its full SHA-256)."""
  arrays = convert.export_resnet(_random_variables())
  arrays["fc.weight"] = np.ones((10, RESNET.out_channels), np.float32)
  arrays["fc.bias"] = np.zeros(10, np.float32)
  state_dict = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
  state_dict.update({k.rsplit(".", 1)[0] + ".num_batches_tracked": torch.tensor(7)
                     for k in arrays if k.endswith("running_mean")})
  path = tmp_path_factory.mktemp("small") / "small_resnet.pth"
  torch.save(state_dict, path)
  return path, arrays, hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: pathlib.Path) -> list[str]:
  """Every name in the cache's weights folder, hidden temporary files included."""
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_holds(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  got = convert.load_state_dict(path)
  assert got.keys() == arrays.keys()  # counters dropped, fc kept
  for key, value in arrays.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  variables = convert.load_resnet_into(_template(), path)  # what training does with it
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], arrays["conv1.weight"].transpose(2, 3, 1, 0))


class _Server(http.server.ThreadingHTTPServer):
  routes: dict[str, tuple[bytes, int]]  # path -> (body, Content-Length announced)


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):  # pylint: disable=invalid-name
    if self.path not in self.server.routes:
      self.send_error(404, "Not Found")
      return
    body, announced = self.server.routes[self.path]
    self.send_response(200)
    self.send_header("Content-Type", "application/octet-stream")
    self.send_header("Content-Length", str(announced))
    self.end_headers()
    self.wfile.write(body)  # HTTP/1.0: the connection closes after this, however many bytes were announced

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  """An HTTP server on 127.0.0.1 in a thread: set .routes, fetch from .base + path."""
  srv = _Server(("127.0.0.1", 0), _Handler)
  srv.routes = {}
  srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()


def _closed_port_url() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/resnet50-0676ba61.pth"  # nothing listens there any more


# ----------------------------------------------------------------------------- registry and config semantics

def test_registered_files_follow_torchvisions_naming():
  for name, ckpt in imagenet.CHECKPOINTS.items():
    m = re.fullmatch(r"https://download\.pytorch\.org/models/(resnet50)-([0-9a-f]{8})\.pth", ckpt.url)
    assert m, ckpt.url
    assert ckpt.sha256 == m[2]  # the published prefix is what is checked
    assert imagenet.cached_path(name, "/c") == pathlib.Path(f"/c/weights/{m[1]}-{m[2]}.safetensors")
  assert imagenet.CHECKPOINTS["resnet50"].file_name == "resnet50-0676ba61.pth"  # IMAGENET1K_V1
  assert imagenet.CHECKPOINTS["resnet50_v2"].file_name == "resnet50-11ad3fa6.pth"  # IMAGENET1K_V2


def test_the_command_is_declared_and_runs_as_a_module(tmp_path):
  assert '"cascaded-lift-weights=cascaded_lift.weights.cli:main"' in (REPO / "setup.py").read_text()
  proc = subprocess.run([sys.executable, "-m", "cascaded_lift.weights.cli", "resnet50", "--from_file",
                         str(tmp_path / "absent.pth"), "--cache_dir", str(tmp_path)], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr == f"cascaded-lift-weights: error: --from_file {tmp_path / 'absent.pth'}: no such file\n"


def test_backbone_weights_setting(tmp_path, small_pth):
  cache = tmp_path / "cache"
  assert imagenet.resolve_backbone_weights("none", cache=cache) is None
  assert imagenet.resolve_backbone_weights(" None ", cache=cache) is None
  for empty in ("", None):
    with pytest.raises(ConfigError, match=r"is empty.*`cascaded-lift-weights resnet50`.*'none'"):
      imagenet.resolve_backbone_weights(empty, cache=cache)
  with pytest.raises(ConfigError) as e:
    imagenet.resolve_backbone_weights("resnet50_v2", cache=cache)
  text = str(e.value)
  assert "not in the cache" in text and "`cascaded-lift-weights resnet50_v2`" in text
  assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in text and "--from_file" in text
  assert imagenet.resolve_backbone_weights(str(small_pth[0]), cache=cache) == small_pth[0]
  with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope.safetensors")) + ".*no such file"):
    imagenet.resolve_backbone_weights(str(tmp_path / "nope.safetensors"), cache=cache)
  path = imagenet.fetch("resnet50_v2", from_file=small_pth[0], sha256=small_pth[2], cache=cache)
  assert imagenet.resolve_backbone_weights("resnet50_v2", cache=cache) == path


# ----------------------------------------------------------------------------- local files

def test_from_file_is_checked_converted_and_cached(tmp_path, small_pth):
  source, arrays, digest = small_pth
  path = imagenet.fetch("resnet50", from_file=source, sha256=digest, cache=tmp_path)
  assert path == tmp_path / "weights" / "resnet50-0676ba61.safetensors"
  assert _files(path.parent) == [path.name]  # no temporary file left, the source not copied
  assert path.stat().st_mode & 0o777 == 0o644  # readable by the other users of a shared cache
  _assert_holds(path, arrays)
  meta = imagenet.source_metadata(path)
  assert meta["source_sha256"] == digest and meta["expected_sha256"] == digest
  assert meta["expectation"] == "override" and meta["source"] == str(source.resolve())
  assert meta["name"] == "resnet50" and meta["source_file"] == "resnet50-0676ba61.pth"


def test_command_with_a_local_file_uses_the_cache_variable(tmp_path, small_pth, monkeypatch, capsys):
  source, arrays, digest = small_pth
  monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "env_cache"))
  assert cli.main(["resnet50", "--from_file", str(source), "--sha256", digest[:8].upper()]) == 0
  out, err = capsys.readouterr()
  path = tmp_path / "env_cache" / "weights" / "resnet50-0676ba61.safetensors"
  assert out == f"{path}\n"
  assert digest in err  # the full SHA-256 of what was verified
  _assert_holds(path, arrays)
  assert imagenet.source_metadata(path)["expected_sha256"] == digest[:8]
  # The config's name now resolves there, and the command answers from the cache without the file.
  assert imagenet.resolve_backbone_weights("resnet50") == path
  assert cli.main(["resnet50"]) == 0
  assert capsys.readouterr().out == f"{path}\n"
  assert cli.main(["--list"]) == 0
  listed = capsys.readouterr().out.splitlines()
  assert listed[0].startswith("resnet50\t") and listed[0].endswith(str(path))
  assert listed[1].endswith("not cached")


def test_a_full_size_resnet50_converts_and_fits_the_paper_model(tmp_path):
  """Torchvision's ResNet-50 shapes (25.6 M numbers, random here): converted, then loaded into the backbone of
  configs/h36m.py's network, as stage 1 will load the real file."""
  net = ResNet(50)
  template = jax.eval_shape(lambda k: net.init(k, jnp.zeros((1, 64, 64, 3)), train=False), jax.random.key(0))
  rng = np.random.default_rng(0)
  arrays = convert.export_resnet(jax.tree_util.tree_map(
      lambda s: rng.standard_normal(size=s.shape, dtype=np.float32), template))
  arrays["fc.weight"], arrays["fc.bias"] = np.zeros((1000, 2048), np.float32), np.zeros(1000, np.float32)
  source = tmp_path / "resnet50-0676ba61.pth"
  torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, source)
  path = imagenet.fetch("resnet50", from_file=source, sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
                        cache=tmp_path / "cache")
  config = h36m.get_config("protocol=1")
  config.init.backbone_weights = "resnet50"
  assert imagenet.resolve_backbone_weights(config.init.backbone_weights, cache=tmp_path / "cache") == path
  variables = convert.load_resnet_into(variables_template(config), path)
  np.testing.assert_array_equal(variables["params"]["backbone"]["layer4_2"]["conv3"]["kernel"],
                                arrays["layer4.2.conv3.weight"].transpose(2, 3, 1, 0))


def test_wrong_checksum_is_one_line_naming_both_digests_and_the_file(tmp_path, small_pth, capsys):
  source, _, digest = small_pth
  assert cli.main(["resnet50", "--from_file", str(source), "--cache_dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("cascaded-lift-weights: error: ")
  assert str(source) in err and digest in err and "0676ba61" in err and "resnet50-0676ba61.pth" in err
  assert _files(tmp_path / "weights") == []


def test_truncated_file_fails_its_checksum(tmp_path, small_pth):
  source, _, digest = small_pth
  cut = tmp_path / "cut.pth"
  cut.write_bytes(source.read_bytes()[:-1000])
  with pytest.raises(imagenet.ChecksumError) as e:
    imagenet.fetch("resnet50", from_file=cut, sha256=digest, cache=tmp_path / "cache")
  assert str(cut) in str(e.value) and digest in str(e.value)
  assert hashlib.sha256(cut.read_bytes()).hexdigest() in str(e.value)
  assert _files(tmp_path / "cache" / "weights") == []


def test_a_file_that_is_not_a_resnet_is_refused(tmp_path, capsys):
  other = tmp_path / "other.pth"
  torch.save({"encoder.weight": torch.zeros(3)}, other)
  digest = hashlib.sha256(other.read_bytes()).hexdigest()
  with pytest.raises(UserError, match=re.escape(str(other)) + r": 'encoder.weight' is not a torchvision ResNet"):
    imagenet.fetch("resnet50", from_file=other, sha256=digest, cache=tmp_path)
  assert _files(tmp_path / "weights") == []
  assert cli.main(["resnet50", "--from_file", str(other), "--sha256", "xyz", "--cache_dir", str(tmp_path)]) == 2
  assert "--sha256 'xyz': expected 8 to 64 hexadecimal digits" in capsys.readouterr().err
  assert cli.main(["resnet5O", "--cache_dir", str(tmp_path)]) == 2
  assert "unknown ImageNet weights 'resnet5O'; known: resnet50, resnet50_v2" in capsys.readouterr().err


# ----------------------------------------------------------------------------- downloads

def test_download_from_a_local_server(tmp_path, small_pth, server, capsys):
  source, arrays, digest = small_pth
  body = source.read_bytes()
  server.routes["/models/resnet50-0676ba61.pth"] = (body, len(body))
  url = server.base + "/models/resnet50-0676ba61.pth"
  seen = []
  path = imagenet.fetch("resnet50", url=url, sha256=digest[:8], cache=tmp_path,
                        progress=lambda got, total: seen.append((got, total)))
  assert _files(path.parent) == [path.name]  # the verified .pth is gone once converted; no .part left
  _assert_holds(path, arrays)
  meta = imagenet.source_metadata(path)
  assert meta["source"] == url and meta["source_sha256"] == digest
  assert seen[-1] == (len(body), len(body))
  # Cached: answered without the network; --force downloads again (here: through the command).
  assert imagenet.fetch("resnet50", url=_closed_port_url(), cache=tmp_path) == path
  assert cli.main(["resnet50", "--url", url, "--sha256", digest, "--cache_dir", str(tmp_path), "--force"]) == 0
  assert capsys.readouterr().out == f"{path}\n"


def test_truncated_download_names_both_byte_counts_and_keeps_nothing(tmp_path, small_pth, server, capsys):
  source, _, digest = small_pth
  body = source.read_bytes()
  server.routes["/resnet50-0676ba61.pth"] = (body[:50_000], len(body))  # announces the whole file
  url = server.base + "/resnet50-0676ba61.pth"
  with pytest.raises(imagenet.TruncatedDownloadError,
                     match=f"download of {re.escape(url)} truncated: received 50000 of the {len(body)} bytes"):
    imagenet.fetch("resnet50", url=url, sha256=digest, cache=tmp_path)
  assert _files(tmp_path / "weights") == []
  assert cli.main(["resnet50", "--url", url, "--sha256", digest, "--cache_dir", str(tmp_path)]) == 2
  last = capsys.readouterr().err.splitlines()[-1]  # after the progress lines: the error, on one line
  assert last.startswith("cascaded-lift-weights: error: download of ")
  assert "truncated: received 50000" in last and "Content-Length" in last


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, small_pth, server):
  source, _, digest = small_pth
  body = source.read_bytes()
  server.routes["/resnet50-0676ba61.pth"] = (body, len(body))
  url = server.base + "/resnet50-0676ba61.pth"
  with pytest.raises(imagenet.ChecksumError) as e:
    imagenet.fetch("resnet50", url=url, cache=tmp_path)  # the registered prefix: not this file's
  assert url in str(e.value) and digest in str(e.value) and "0676ba61" in str(e.value)
  assert _files(tmp_path / "weights") == []


def test_unreachable_server_says_how_to_work_offline(tmp_path, capsys):
  url = _closed_port_url()
  with pytest.raises(imagenet.NoNetworkError) as e:
    imagenet.fetch("resnet50", url=url, cache=tmp_path)
  text = str(e.value)
  assert url in text and "download https://download.pytorch.org/models/resnet50-0676ba61.pth elsewhere" in text
  assert "`cascaded-lift-weights resnet50 --from_file resnet50-0676ba61.pth`" in text
  assert cli.main(["resnet50", "--url", url, "--cache_dir", str(tmp_path)]) == 2
  assert capsys.readouterr().err.count("\n") == 1
  assert _files(tmp_path / "weights") == []


def test_server_error_status_is_named(tmp_path, server):
  with pytest.raises(imagenet.DownloadError, match="HTTP 404"):
    imagenet.fetch("resnet50", url=server.base + "/missing.pth", cache=tmp_path)
  assert _files(tmp_path / "weights") == []


def test_a_verified_download_left_by_a_failed_conversion_is_reused(tmp_path, small_pth):
  source, arrays, digest = small_pth
  folder = tmp_path / "weights"
  folder.mkdir()
  (folder / "resnet50-0676ba61.pth").write_bytes(source.read_bytes())
  path = imagenet.fetch("resnet50", url=_closed_port_url(), sha256=digest, cache=tmp_path)  # no network needed
  _assert_holds(path, arrays)
  assert _files(folder) == [path.name]
