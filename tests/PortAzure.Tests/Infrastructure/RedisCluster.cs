using System.Diagnostics;
using System.Globalization;
using System.Net;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// A Redis Cluster of three primaries: real redis-server processes on loopback (cluster-enabled, with noeviction),
/// their slots split by <c>redis-cli --cluster create</c>, so that the relay's one slot lies on one of them and the
/// client must route to it.
/// </summary>
public sealed class RedisCluster : IAsyncDisposable
{
    private readonly List<RedisServer> _nodes;

    private RedisCluster(List<RedisServer> nodes) => _nodes = nodes;

    /// <summary>The three primaries the cluster was made of (a replica added later is found by the client).</summary>
    public string ConnectionString =>
        string.Join(",", _nodes.Take(3).Select(n => $"127.0.0.1:{n.Port}")) + ",abortConnect=false,connectTimeout=2000,syncTimeout=3000,asyncTimeout=3000";

    // Every node, for this class's own calls to each of them.
    private string AllNodes => string.Join(",", _nodes.Select(n => $"127.0.0.1:{n.Port}")) + ",connectTimeout=2000";

    /// <summary>The port of the node that serves the relay's keys.</summary>
    public int RelayNodePort { get; private set; }

    public static async Task<RedisCluster> StartAsync()
    {
        var nodes = new List<RedisServer>();
        try
        {
            for (var i = 0; i < 3; i++)
            {
                nodes.Add(await StartNodeAsync());
            }
            await RedisCliAsync(["--cluster", "create", .. nodes.Select(n => $"127.0.0.1:{n.Port}"), "--cluster-replicas", "0", "--cluster-yes"]);
            var cluster = new RedisCluster(nodes);
            await cluster.WaitUntilServedAsync();
            return cluster;
        }
        catch
        {
            foreach (var node in nodes)
            {
                await node.DisposeAsync();
            }
            throw;
        }
    }

    /// <summary>A fourth node, a replica of the relay's node, once it has caught up: what <see cref="FailOverRelayNodeAsync"/> promotes.</summary>
    public async Task AddReplicaOfRelayNodeAsync()
    {
        var replica = await StartNodeAsync();
        _nodes.Add(replica);
        await using var connection = await ConnectionMultiplexer.ConnectAsync(AllNodes);
        var primaryId = (string)(await connection.GetServer("127.0.0.1", RelayNodePort).ExecuteAsync("CLUSTER", "MYID"))!;
        await RedisCliAsync(["--cluster", "add-node", $"127.0.0.1:{replica.Port}", $"127.0.0.1:{RelayNodePort}", "--cluster-slave", "--cluster-master-id", primaryId]);
        await WaitForAsync(() => RedisServer.IsLinkedAsync(connection, replica.Port), "the replica is in sync");
    }

    /// <summary>
    /// A manual failover (<c>CLUSTER FAILOVER</c> on the replica), as a managed Redis does for maintenance: the primary
    /// stops taking writes, the replica catches up and takes its slots, and the old primary becomes its replica.
    /// </summary>
    public async Task FailOverRelayNodeAsync()
    {
        var replica = _nodes[3].Port;
        await using var connection = await ConnectionMultiplexer.ConnectAsync(AllNodes);
        var slot = (long)await connection.GetServer("127.0.0.1", replica).ExecuteAsync("CLUSTER", "KEYSLOT", RedisKeys.Stream);
        await connection.GetServer("127.0.0.1", replica).ExecuteAsync("CLUSTER", "FAILOVER");
        await WaitForAsync(async () =>
        {
            foreach (var node in _nodes)
            {
                // Every node names the replica as the primary of the relay's slot.
                var ranges = (RedisResult[])(await connection.GetServer("127.0.0.1", node.Port).ExecuteAsync("CLUSTER", "SLOTS"))!;
                if (!ranges.Select(r => (RedisResult[])r!).Any(r => (long)r[0] <= slot && (long)r[1] >= slot && (long)((RedisResult[])r[2]!)[1] == replica))
                {
                    return false;
                }
            }
            return true;
        }, "every node sees the replica as the slot's primary");
        RelayNodePort = replica;
    }

    /// <summary>
    /// Moves the relay's slot, keys and all, to another node as <c>redis-cli --cluster reshard</c> does: the target
    /// IMPORTING it and the source MIGRATING it, the keys sent over by MIGRATE in batches of <paramref name="batch"/> with
    /// <paramref name="pause"/> between them (the relay, going on meanwhile, meets ASK redirections and TRYAGAIN), then
    /// the slot given to the target on every node.
    /// </summary>
    /// <returns>How many keys were moved.</returns>
    public async Task<int> MoveRelaySlotAsync(int batch, TimeSpan pause)
    {
        await using var connection = await ConnectionMultiplexer.ConnectAsync(AllNodes);
        var source = connection.GetServer("127.0.0.1", RelayNodePort);
        var targetPort = _nodes.First(n => n.Port != RelayNodePort).Port;
        var target = connection.GetServer("127.0.0.1", targetPort);
        var sourceId = (string)(await source.ExecuteAsync("CLUSTER", "MYID"))!;
        var targetId = (string)(await target.ExecuteAsync("CLUSTER", "MYID"))!;
        var slot = (int)await source.ExecuteAsync("CLUSTER", "KEYSLOT", RedisKeys.Stream);
        await target.ExecuteAsync("CLUSTER", "SETSLOT", slot, "IMPORTING", sourceId);
        await source.ExecuteAsync("CLUSTER", "SETSLOT", slot, "MIGRATING", targetId);
        var moved = 0;
        while ((RedisResult[])(await source.ExecuteAsync("CLUSTER", "GETKEYSINSLOT", slot, batch))! is { Length: > 0 } keys)
        {
            await source.ExecuteAsync("MIGRATE", ["127.0.0.1", targetPort, "", 0, 5000, "KEYS", .. keys.Select(k => (object)(string)k!)]);
            moved += keys.Length;
            await Task.Delay(pause);
        }
        // The target first, as redis-cli does: it then answers for the slot before the source sends clients to it.
        await target.ExecuteAsync("CLUSTER", "SETSLOT", slot, "NODE", targetId);
        foreach (var node in _nodes.Where(n => n.Port != targetPort))
        {
            await connection.GetServer("127.0.0.1", node.Port).ExecuteAsync("CLUSTER", "SETSLOT", slot, "NODE", targetId);
        }
        RelayNodePort = targetPort;
        return moved;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var node in _nodes)
        {
            await node.DisposeAsync();
        }
    }

    // The bus port named: by default it is the port + 10000, which nothing keeps free.
    private static Task<RedisServer> StartNodeAsync() => RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction", "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf", "--cluster-port", RedisServer.FreePort().ToString(CultureInfo.InvariantCulture));

    private static async Task RedisCliAsync(IEnumerable<string> args)
    {
        var start = new ProcessStartInfo("redis-cli") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using var cli = Process.Start(start) ?? throw new InvalidOperationException("redis-cli did not start");
        var output = cli.StandardOutput.ReadToEndAsync();
        var errors = cli.StandardError.ReadToEndAsync();
        await cli.WaitForExitAsync();
        if (cli.ExitCode != 0)
        {
            throw new InvalidOperationException($"redis-cli {string.Join(' ', start.ArgumentList)} failed ({cli.ExitCode}): {await output}{await errors}");
        }
    }

    /// <summary>Until every node says the cluster is ok; then which node serves the relay's slot.</summary>
    private async Task WaitUntilServedAsync()
    {
        await using var connection = await ConnectionMultiplexer.ConnectAsync(AllNodes);
        await WaitForAsync(async () =>
        {
            foreach (var node in _nodes)
            {
                if (!((string?)await connection.GetServer("127.0.0.1", node.Port).ExecuteAsync("CLUSTER", "INFO"))!.Contains("cluster_state:ok", StringComparison.Ordinal))
                {
                    return false;
                }
            }
            return true;
        }, "the cluster is ok");
        await connection.ConfigureAsync();
        RelayNodePort = ((IPEndPoint)connection.GetServer(RedisKeys.Stream, flags: CommandFlags.DemandMaster).EndPoint).Port;
    }

    // Redis refuses calls while the cluster settles (CLUSTERDOWN): not yet, rather than a failure.
    private static Task WaitForAsync(Func<Task<bool>> condition, string what) => Eventually.HoldsAsync(async () =>
    {
        try
        {
            return await condition();
        }
        catch (RedisException)
        {
            return false;
        }
    }, TimeSpan.FromSeconds(30), what);
}
