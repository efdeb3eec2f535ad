using System.Diagnostics;
using System.Globalization;
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
    private readonly RedisServer[] _nodes;

    private RedisCluster(RedisServer[] nodes) => _nodes = nodes;

    public string ConnectionString =>
        string.Join(",", _nodes.Select(n => $"127.0.0.1:{n.Port}")) + ",abortConnect=false,connectTimeout=2000,syncTimeout=3000,asyncTimeout=3000";

    /// <summary>The port of the node that serves the relay's keys.</summary>
    public int RelayNodePort { get; private set; }

    public static async Task<RedisCluster> StartAsync()
    {
        var nodes = new List<RedisServer>();
        try
        {
            for (var i = 0; i < 3; i++)
            {
                // The bus port named: by default it is the port + 10000, which nothing keeps free.
                nodes.Add(await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction", "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf", "--cluster-port", RedisServer.FreePort().ToString(CultureInfo.InvariantCulture)));
            }
            await CreateAsync(nodes);
            var cluster = new RedisCluster([.. nodes]);
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

    private static async Task CreateAsync(List<RedisServer> nodes)
    {
        var start = new ProcessStartInfo("redis-cli") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "--cluster", "create" }.Concat(nodes.Select(n => $"127.0.0.1:{n.Port}")).Concat(["--cluster-replicas", "0", "--cluster-yes"]))
        {
            start.ArgumentList.Add(arg);
        }
        using var create = Process.Start(start) ?? throw new InvalidOperationException("redis-cli did not start");
        var output = create.StandardOutput.ReadToEndAsync();
        var errors = create.StandardError.ReadToEndAsync();
        await create.WaitForExitAsync();
        if (create.ExitCode != 0)
        {
            throw new InvalidOperationException($"redis-cli --cluster create failed ({create.ExitCode}): {await output}{await errors}");
        }
    }

    /// <summary>Until every node says the cluster is ok, and the client knows which node serves the relay's slot.</summary>
    private async Task WaitUntilServedAsync()
    {
        await using var connection = await ConnectionMultiplexer.ConnectAsync(ConnectionString);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            try
            {
                var states = new List<string>();
                foreach (var node in _nodes)
                {
                    states.Add((string?)await connection.GetServer("127.0.0.1", node.Port).ExecuteAsync("CLUSTER", "INFO") ?? "");
                }
                if (states.All(s => s.Contains("cluster_state:ok", StringComparison.Ordinal)))
                {
                    await connection.ConfigureAsync();
                    await connection.GetDatabase().StringGetAsync(RedisKeys.Stream);
                    RelayNodePort = ((System.Net.IPEndPoint)connection.GetServer(RedisKeys.Stream, flags: CommandFlags.DemandMaster).EndPoint).Port;
                    return;
                }
            }
            catch (RedisException) when (DateTime.UtcNow < deadline)
            {
            }
            if (DateTime.UtcNow >= deadline)
            {
                throw new InvalidOperationException("the Redis Cluster did not become ok within 30 s");
            }
            await Task.Delay(100);
        }
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
        await using var connection = await ConnectionMultiplexer.ConnectAsync(ConnectionString);
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
}
