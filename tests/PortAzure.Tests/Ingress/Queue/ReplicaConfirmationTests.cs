using PortAzure.Ingress.Queue;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress.Queue;

/// <summary>WAIT against a real primary and its replica.</summary>
public class ReplicaConfirmationTests
{
    // Short where no replica can answer; long where one in sync must (a loaded machine can be slow to schedule it).
    private static readonly TimeSpan Timeout = TimeSpan.FromMilliseconds(300);
    private static readonly TimeSpan InSync = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task WaitAsync_ReplicaInSync_CountsItAndTheReplicaHoldsTheWrite()
    {
        await using var pair = await Pair.StartAsync();
        await using var onReplica = await ConnectionMultiplexer.ConnectAsync(pair.Replica.ConnectionString);

        var acknowledged = await pair.Confirmation.WaitAsync(1, InSync, await pair.WriteAsync());

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionChanged: false), acknowledged);
        Assert.True(acknowledged.Confirms(1));
        Assert.Equal("1", (string?)await onReplica.GetServer("127.0.0.1", pair.Replica.Port).ExecuteAsync("GET", "written"));
    }

    [Fact]
    public async Task WaitAsync_ReplicaPaused_AnswersNoneAfterTheTimeout()
    {
        await using var pair = await Pair.StartAsync();
        pair.Replica.Pause();
        try
        {
            var stamp = await pair.WriteAsync();

            Assert.Equal(new ReplicaAcknowledgement(0, ConnectionChanged: false), await pair.Confirmation.WaitAsync(1, Timeout, stamp));
        }
        finally
        {
            pair.Replica.Resume();
        }
    }

    [Fact]
    public async Task WaitAsync_NoReplica_AnswersNone()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var confirmation = new ReplicaConfirmation(leased.Connection);
        var stamp = confirmation.Stamp();
        await leased.Db.StringSetAsync("written", "1");

        Assert.Equal(new ReplicaAcknowledgement(0, ConnectionChanged: false), await confirmation.WaitAsync(1, Timeout, stamp));
    }

    [Fact]
    public async Task WaitAsync_ManyCallersAtOnce_ShareWaits()
    {
        await using var pair = await Pair.StartAsync();
        const int Callers = 200;

        var acknowledged = await Task.WhenAll(Enumerable.Range(0, Callers).Select(async i =>
            await pair.Confirmation.WaitAsync(1, InSync, await pair.WriteAsync($"written:{i}"))));

        Assert.All(acknowledged, a => Assert.True(a.Confirms(1)));
        // cmdstat_wait:calls=3,usec=...
        var stats = await RedisServer.InfoFieldAsync(pair.Redis, pair.Primary.Port, "commandstats", "cmdstat_wait");
        var waits = long.Parse(stats!.Split(',')[0]["calls=".Length..], System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(waits, 1, Callers / 4);
    }

    [Fact]
    public async Task WaitAsync_AfterAWaitTimedOut_AsksAgain()
    {
        // The loop that sends the waits stops when no caller is left and starts again for the next.
        await using var pair = await Pair.StartAsync();
        pair.Replica.Pause();
        Assert.Equal(0, (await pair.Confirmation.WaitAsync(1, Timeout, await pair.WriteAsync("first"))).Replicas);
        pair.Replica.Resume();

        var second = await pair.WriteAsync("second");

        Assert.True((await pair.Confirmation.WaitAsync(1, InSync, second)).Confirms(1));
    }

    [Fact]
    public async Task WaitAsync_ReconnectedSinceTheWrite_DoesNotConfirm()
    {
        // A WAIT on the new connection counts none of the old one's writes, and answers with every replica at once.
        // The WAIT is sent as soon as the client is connected again, whether or not it has raised its failure event.
        await using var pair = await Pair.StartAsync();
        await using var admin = await ConnectionMultiplexer.ConnectAsync(pair.Primary.ConnectionString);
        var stamp = await pair.WriteAsync();

        var server = pair.Redis.GetServer("127.0.0.1", pair.Primary.Port);
        var id = (long)await server.ExecuteAsync("CLIENT", "ID");
        await admin.GetServer("127.0.0.1", pair.Primary.Port).ExecuteAsync("CLIENT", "KILL", "ID", id);
        await Eventually.HoldsAsync(async () =>
        {
            try
            {
                return (long)await server.ExecuteAsync("CLIENT", "ID") != id;
            }
            catch (RedisConnectionException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(10), "the client is on a new connection");
        var acknowledged = await pair.Confirmation.WaitAsync(1, InSync, stamp);

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionChanged: true), acknowledged);
        Assert.False(acknowledged.Confirms(1));
        // A write stamped on the new connection is confirmed again.
        Assert.True((await pair.Confirmation.WaitAsync(1, InSync, await pair.WriteAsync())).Confirms(1));
    }

    [Fact]
    public async Task WaitAsync_AnotherServerReconnectingMeanwhile_StillConfirms()
    {
        // A server named in the connection string that is down (a replica being replaced) is retried about once a
        // second, each try a socket: that is not the write's connection, and must not make its run unconfirmed.
        using var down = new ClosedPort();
        await using var pair = await Pair.StartAsync(primary => $"127.0.0.1:{primary.Port},127.0.0.1:{down.Port},abortConnect=false,connectTimeout=500");
        var socketsBefore = pair.Redis.GetCounters().Interactive.SocketCount;
        var stamp = await pair.WriteAsync();
        await Eventually.HoldsAsync(() => Task.FromResult(pair.Redis.GetCounters().Interactive.SocketCount > socketsBefore),
            TimeSpan.FromSeconds(20), "the client tried the down server again");

        Assert.True((await pair.Confirmation.WaitAsync(1, InSync, stamp)).Confirms(1));
    }

    [Fact]
    public async Task WaitAsync_StampedForAnotherServer_DoesNotConfirm()
    {
        // The client's map moved the relay's slot between the write and the WAIT (a failover, a redirection): the
        // WAIT counts the new server's replicas, not the write's.
        await using var pair = await Pair.StartAsync();
        var stamp = await pair.WriteAsync() with { Server = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, pair.Replica.Port) };

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionChanged: true), await pair.Confirmation.WaitAsync(1, InSync, stamp));
        Assert.False((await pair.Confirmation.WaitAsync(1, InSync, default)).Confirms(1));
    }

    /// <summary>A primary, its replica in sync, a client of the primary and the confirmation under test on it.</summary>
    private sealed class Pair(RedisServer primary, RedisServer replica, ConnectionMultiplexer redis) : IAsyncDisposable
    {
        public RedisServer Primary { get; } = primary;

        public RedisServer Replica { get; } = replica;

        public ConnectionMultiplexer Redis { get; } = redis;

        public ReplicaConfirmation Confirmation { get; } = new(redis);

        public static async Task<Pair> StartAsync(Func<RedisServer, string>? connectionString = null)
        {
            var primary = await RedisServer.StartAsync();
            var replica = await RedisServer.StartReplicaOfAsync(primary);
            var redis = await ConnectionMultiplexer.ConnectAsync(connectionString?.Invoke(primary) ?? primary.ConnectionString);
            return new Pair(primary, replica, redis);
        }

        /// <summary>Stamps a write as the Ingress does, then makes it.</summary>
        public async Task<WriteStamp> WriteAsync(string key = "written")
        {
            var stamp = Confirmation.Stamp();
            await Redis.GetDatabase().StringSetAsync(key, "1");
            return stamp;
        }

        public async ValueTask DisposeAsync()
        {
            await Redis.DisposeAsync();
            await Replica.DisposeAsync();
            await Primary.DisposeAsync();
        }
    }
}
