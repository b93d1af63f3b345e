"""TLS on client, route and leaf links: certificates, a TLS mesh, and who it refuses.

The plain-vs-TLS runs of the mesh's request/reply, scatter-gather and failover
tests live in tests/bus/test_mesh.py and of the auction tests in
tests/protocols/auction/test_contract_net.py (``@over_plain_and_tls``); here is what
only TLS has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from agoramesh.bus import Bus, Identity
from agoramesh.bus.server import EmbeddedServer, render_config
from agoramesh.config import BusConfig, Environment, ServerConfig, ServerRole, TlsConfig
from agoramesh.errors import ConfigError, NotConnected, ServerStartError
from agoramesh.nodes.task import TaskStatus
from agoramesh.protocols.auction.policy import Progress
from agoramesh.security.certs import (
    CA_CERT,
    CA_KEY,
    NODE_CERT,
    NODE_KEY,
    CertificateSet,
    issue_certificates,
    tls_config,
)
from agoramesh.testing import NodeProcess, UpProcess, assert_stopped, wait_until
from agoramesh.testing.cli import assert_one_line_error, cli
from agoramesh.testing.plugin import (
    AgentFactory,
    BusFactory,
    MeshFactory,
    over_plain_and_tls,
)

# -- certificates -----------------------------------------------------------------------


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_are_a_ca_and_a_node_certificate_for_both_ends(tmp_path: Path) -> None:
    issued = issue_certificates(tmp_path / "tls", hosts=("mesh.example", "10.1.2.3"), days=30)
    assert issued.ca_created
    for name, mode in ((CA_KEY, 0o600), (NODE_KEY, 0o600), (CA_CERT, 0o644), (NODE_CERT, 0o644)):
        assert stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode) == mode, name
    ca, node = _cert(issued.ca_file), _cert(issued.cert_file)
    assert isinstance(node.public_key(), ec.EllipticCurvePublicKey)
    assert node.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    node.verify_directly_issued_by(ca)
    eku = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "mesh.example"]
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1", "10.1.2.3"}
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < node.not_valid_after_utc - now <= dt.timedelta(days=30)
    assert dt.timedelta(days=3640) < ca.not_valid_after_utc - now <= dt.timedelta(days=3650)
    assert issued.tls == tls_config(tmp_path / "tls")


def test_existing_files_are_kept_and_the_ca_is_reused(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    first = issue_certificates(directory)
    ca_bytes, node_bytes = first.ca_file.read_bytes(), first.cert_file.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        issue_certificates(directory)
    assert first.cert_file.read_bytes() == node_bytes
    again = issue_certificates(directory, force=True, hosts=("b.example",))
    assert not again.ca_created and first.ca_file.read_bytes() == ca_bytes
    assert again.cert_file.read_bytes() != node_bytes
    assert stat.S_IMODE(again.key_file.stat().st_mode) == 0o600
    _cert(again.cert_file).verify_directly_issued_by(_cert(first.ca_file))
    # Another machine's certificate from the same CA: its key stays where it is.
    other = issue_certificates(tmp_path / "other", ca_dir=directory)
    assert not (tmp_path / "other" / CA_KEY).exists()
    assert other.ca_file.read_bytes() == ca_bytes
    _cert(other.cert_file).verify_directly_issued_by(_cert(first.ca_file))


def test_tls_config_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        tls_config(tmp_path / "nowhere")
    issue_certificates(tmp_path / "tls")
    (tmp_path / "tls" / NODE_KEY).unlink()
    with pytest.raises(ConfigError, match=f"lacks {NODE_KEY}"):
        tls_config(tmp_path / "tls")
    assert tls_config(tmp_path / "tls", client=True) == TlsConfig(
        ca_file=tmp_path / "tls" / CA_CERT)
    with pytest.raises(ConfigError, match="no CA in"):
        issue_certificates(tmp_path / "x", ca_dir=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="at least 1"):
        issue_certificates(tmp_path / "y", days=0)


def test_environment_reads_agoramesh_tls() -> None:
    assert Environment.read({"AGORAMESH_TLS": "/etc/mesh"}).tls_dir == Path("/etc/mesh")
    assert Environment.read({}).tls_dir is None


def test_rendered_config_has_tls_on_every_link(tls_certs: CertificateSet, tmp_path: Path
                                               ) -> None:
    seed = render_config(ServerConfig(name="s", data_dir=tmp_path, tls=tls_certs.tls))
    # Clients: encrypted, no certificate asked; routes and leaf nodes: mutual TLS.
    assert seed.count(f'cert_file: "{tls_certs.cert_file}"') == 3
    assert seed.count("verify: false") == 1 and seed.count("verify: true") == 2
    leaf = render_config(ServerConfig(name="l", role=ServerRole.LEAF, data_dir=tmp_path,
                                      hubs=("127.0.0.1:7422",), tls=tls_certs.tls))
    assert leaf.count(f'ca_file: "{tls_certs.ca_file}"') == 2  # client port + the remote


# -- a TLS mesh -------------------------------------------------------------------------


@pytest.mark.integration
@over_plain_and_tls
async def test_auction_between_agents_on_two_leaves(
        mesh_factory: MeshFactory, agent_factory: AgentFactory,
        mesh_tls: TlsConfig | None) -> None:
    mesh = await mesh_factory(seeds=3, leaves=2)
    leaf1, leaf2 = mesh.leaves
    assert all(s.client_url.startswith("tls://" if mesh_tls else "nats://")
               for s in mesh.servers)
    for server in mesh.servers:
        varz = await server._monitor().varz()
        assert bool(varz.get("tls_required")) is (mesh_tls is not None)
        if server.config.role is ServerRole.SEED:  # routes and leaf links: mutual TLS
            for link in (varz["cluster"], varz["leaf"]):
                assert bool(link.get("tls_required") and link.get("tls_verify")) is (
                    mesh_tls is not None)
    client = await agent_factory(leaf1.client_url, "client", ["vote"])
    workers = [await agent_factory(leaf2.client_url, f"w{i}", ["math.evaluate"])
               for i in range(2)]
    await wait_until(lambda: all(w.agent_id in client.directory for w in workers), timeout=5)
    events: list[Progress] = []
    result = await client.dispatcher.submit("math.evaluate", {"expression": "6*7"},
                                            progress=events.append, timeout=10)
    assert result.status is TaskStatus.COMPLETED
    assert result.result == {"value": 42}
    assert result.agent_id in {w.agent_id for w in workers}
    bids = next(e for e in events if e.event == "bids")
    assert bids.detail["answered"] == 2
    assert all(node.bus.rejections.total() == 0 for node in (client, *workers))


@pytest.mark.integration
async def test_a_client_without_the_ca_cannot_connect(
        mesh_factory: MeshFactory, tls_certs: CertificateSet, tmp_path: Path) -> None:
    mesh = await mesh_factory(seeds=1, leaves=1,
                              template=ServerConfig(name="t", data_dir=tmp_path / "m",
                                                    tls=tls_certs.tls))
    for url in (mesh.url, mesh.leaves[0].client_url,
                mesh.url.replace("tls://", "nats://")):  # the scheme does not matter
        with pytest.raises(NotConnected, match="pass its CA with --tls"):
            await Bus.connect(Identity.generate(), BusConfig(servers=(url,),
                                                             connect_timeout=1.0))
    stranger = issue_certificates(tmp_path / "stranger")
    with pytest.raises(NotConnected, match="not signed by"):
        await Bus.connect(Identity.generate(), BusConfig(
            servers=(mesh.url,), connect_timeout=1.0,
            tls=TlsConfig(ca_file=stranger.ca_file)))


@pytest.mark.integration
async def test_a_client_given_a_ca_refuses_a_plaintext_server(
        nats_server: EmbeddedServer, tls_certs: CertificateSet) -> None:
    assert nats_server.client_url.startswith("nats://")
    with pytest.raises(NotConnected, match="does not use TLS"):
        await Bus.connect(Identity.generate(), BusConfig(
            servers=(nats_server.client_url,), tls=TlsConfig(ca_file=tls_certs.ca_file)))


@pytest.mark.integration
@pytest.mark.parametrize("role", [ServerRole.SEED, ServerRole.LEAF])
async def test_a_link_with_a_certificate_from_another_ca_is_refused(
        mesh_factory: MeshFactory, bus_factory: BusFactory, tls_certs: CertificateSet,
        tmp_path: Path, role: ServerRole) -> None:
    mesh = await mesh_factory(seeds=2, template=ServerConfig(name="t", data_dir=tmp_path / "m",
                                                             tls=tls_certs.tls))
    hub = mesh.seeds[0]
    other = issue_certificates(tmp_path / "other-ca")
    # It trusts the mesh's CA, so only the mesh's side can refuse it: by its certificate.
    rogue_tls = TlsConfig(ca_file=tls_certs.ca_file, cert_file=other.cert_file,
                          key_file=other.key_file)
    links = ({"bootstrap": (hub.cluster_address,)} if role is ServerRole.SEED
             else {"hubs": (hub.leaf_address,)})
    rogue = EmbeddedServer(ServerConfig(name=f"rogue-{role}", role=role,
                                        data_dir=tmp_path / "rogue", tls=rogue_tls,
                                        ready_timeout=2.0, **links))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            with pytest.raises(ServerStartError, match="not ready within 2s"):
                await rogue.start()
    finally:
        await rogue.stop(grace=1.0)
    kind = "route" if role is ServerRole.SEED else "leafnode"
    log = hub.log_path.read_text()
    assert f"TLS {kind} handshake error" in log
    assert "certificate signed by unknown authority" in log
    assert await hub._monitor().route_peers() == {"seed2"}
    assert await hub._monitor().leaf_hubs() == []  # on a seed: the leaves attached to it
    assert_stopped([rogue.pid])


# -- the CLI ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_certs_cli_creates_refuses_and_reports(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    result = cli("certs", "--dir", str(directory), "--host", "node1.example", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ca_created"] is True
    assert report["hosts"] == ["localhost", "127.0.0.1", "::1", "node1.example"]
    assert tls_config(directory).cert_file == Path(report["cert_file"])
    ca_bytes = (directory / CA_CERT).read_bytes()

    assert_one_line_error(cli("certs", "--dir", str(directory)), "refusing to overwrite")
    result = cli("certs", "--dir", str(directory), "--force")
    assert result.returncode == 0, result.stderr
    assert "reused CA" in result.stdout
    assert (directory / CA_CERT).read_bytes() == ca_bytes

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert_one_line_error(cli("certs", "--dir", str(not_a_dir)), "is not a directory")
    assert_one_line_error(cli("certs", "--dir", str(not_a_dir / "sub")), "cannot create")
    assert_one_line_error(cli("certs", "--dir", str(tmp_path / "d"), "--days", "0"),
                          "at least 1")
    assert cli("certs", "--help").returncode == 0


@pytest.mark.e2e
def test_up_with_tls_serves_tls_clients_only(tmp_path: Path) -> None:
    certs = tmp_path / "tls"
    assert cli("certs", "--dir", str(certs)).returncode == 0
    up = UpProcess(tmp_path / "mesh", "--tls", str(certs), "--leaves", "1")
    try:
        assert up.url.startswith("tls://127.0.0.1:")
        result = cli("agents", "--server", up.url, "--tls", str(certs), "--json")
        assert result.returncode == 0, result.stderr
        assert {card["name"] for card in json.loads(result.stdout)} >= {"coder", "analyst"}
        result = cli("submit", "echo", '{"text": "hi"}', "--server", up.url, "--json",
                     "--tls", str(certs))
        assert result.returncode == 0, result.stderr
        assert_one_line_error(cli("agents", "--server", up.url), "pass its CA with --tls")
        assert_one_line_error(cli("agents", "--server", up.url, "--tls", str(tmp_path / "no")),
                              "does not exist")
        up.interrupt()
        assert up.process.returncode == 0, up.stderr
        assert "eof_received" not in up.stderr
        assert_stopped(up.pids)
    finally:
        up.reap()


@pytest.mark.e2e
def test_nodes_with_tls_form_a_mesh_a_seed_and_a_leaf(tmp_path: Path) -> None:
    certs = tmp_path / "tls"
    assert cli("certs", "--dir", str(certs)).returncode == 0
    nodes: list[NodeProcess] = []
    try:
        nodes.append(NodeProcess(tmp_path / "a", "--name", "hub", "--tls", str(certs),
                                 "--capability", "echo"))
        hub = nodes[0].ready
        assert hub["client"].startswith("tls://127.0.0.1:")
        nodes.append(NodeProcess(tmp_path / "b", "--name", "edge", "--leaf", hub["leaf"],
                                 "--capability", "echo", env={"AGORAMESH_TLS": str(certs)}))
        edge = nodes[1].ready
        assert edge["client"].startswith("tls://127.0.0.1:")
        result = cli("agents", "--server", edge["client"], "--tls", str(certs), "--json")
        assert result.returncode == 0, result.stderr
        assert {card["name"] for card in json.loads(result.stdout)} == {"hub", "edge"}
        for node in reversed(nodes):
            assert node.stop() == 0, node.stderr
        assert_stopped([node.ready["pid"] for node in nodes])
    finally:
        for node in nodes:
            node.reap()
