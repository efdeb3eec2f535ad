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
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        await using var onReplica = await ConnectionMultiplexer.ConnectAsync(replica.ConnectionString);

        var confirmation = new ReplicaConfirmation(redis);
        var stamp = confirmation.Stamp();
        await redis.GetDatabase().StringSetAsync("written", "1");
        var acknowledged = await confirmation.WaitAsync(1, InSync, stamp);

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionChanged: false), acknowledged);
        Assert.True(acknowledged.Confirms(1));
        Assert.Equal("1", (string?)await onReplica.GetServer("127.0.0.1", replica.Port).ExecuteAsync("GET", "written"));
    }

    [Fact]
    public async Task WaitAsync_ReplicaPaused_AnswersNoneAfterTheTimeout()
    {
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        var confirmation = new ReplicaConfirmation(redis);
        replica.Pause();
        try
        {
            var stamp = confirmation.Stamp();
            await redis.GetDatabase().StringSetAsync("written", "1");

            Assert.Equal(new ReplicaAcknowledgement(0, ConnectionChanged: false), await confirmation.WaitAsync(1, Timeout, stamp));
        }
        finally
        {
            replica.Resume();
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
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        var confirmation = new ReplicaConfirmation(redis);
        var db = redis.GetDatabase();
        const int Callers = 200;

        var acknowledged = await Task.WhenAll(Enumerable.Range(0, Callers).Select(async i =>
        {
            var stamp = confirmation.Stamp();
            await db.StringSetAsync($"written:{i}", "1");
            return await confirmation.WaitAsync(1, InSync, stamp);
        }));

        Assert.All(acknowledged, a => Assert.True(a.Confirms(1)));
        var waits = WaitCalls((string)(await redis.GetServer("127.0.0.1", primary.Port).ExecuteAsync("INFO", "commandstats"))!);
        Assert.InRange(waits, 1, Callers / 4);
    }

    [Fact]
    public async Task WaitAsync_AfterAWaitTimedOut_AsksAgain()
    {
        // The loop that sends the waits stops when no caller is left and starts again for the next.
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        var confirmation = new ReplicaConfirmation(redis);
        replica.Pause();
        var first = confirmation.Stamp();
        await redis.GetDatabase().StringSetAsync("first", "1");
        Assert.Equal(0, (await confirmation.WaitAsync(1, Timeout, first)).Replicas);
        replica.Resume();

        var second = confirmation.Stamp();
        await redis.GetDatabase().StringSetAsync("second", "1");

        Assert.True((await confirmation.WaitAsync(1, InSync, second)).Confirms(1));
    }

    [Fact]
    public async Task WaitAsync_ReconnectedSinceTheWrite_DoesNotConfirm()
    {
        // A WAIT on the new connection counts none of the old one's writes, and answers with every replica at once.
        // The WAIT is sent as soon as the client is connected again, whether or not it has raised its failure event.
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        await using var admin = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        var confirmation = new ReplicaConfirmation(redis);
        var stamp = confirmation.Stamp();
        await redis.GetDatabase().StringSetAsync("written", "1");

        var id = (long)await redis.GetServer("127.0.0.1", primary.Port).ExecuteAsync("CLIENT", "ID");
        await admin.GetServer("127.0.0.1", primary.Port).ExecuteAsync("CLIENT", "KILL", "ID", id);
        await Eventually.HoldsAsync(async () =>
        {
            try
            {
                return (long)await redis.GetServer("127.0.0.1", primary.Port).ExecuteAsync("CLIENT", "ID") != id;
            }
            catch (RedisConnectionException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(10), "the client is on a new connection");
        var acknowledged = await confirmation.WaitAsync(1, InSync, stamp);

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionChanged: true), acknowledged);
        Assert.False(acknowledged.Confirms(1));
        // A write stamped on the new connection is confirmed again.
        var again = confirmation.Stamp();
        await redis.GetDatabase().StringSetAsync("written", "2");
        Assert.True((await confirmation.WaitAsync(1, InSync, again)).Confirms(1));
    }

    [Fact]
    public async Task WaitAsync_AnotherServerReconnectingMeanwhile_StillConfirms()
    {
        // A server named in the connection string that is down (a replica being replaced) is retried about once a
        // second, each try a socket: that is not the write's connection, and must not make its run unconfirmed.
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        using var down = new ClosedPort();
        await using var redis = await ConnectionMultiplexer.ConnectAsync($"127.0.0.1:{primary.Port},127.0.0.1:{down.Port},abortConnect=false,connectTimeout=500");
        var confirmation = new ReplicaConfirmation(redis);
        var stamp = confirmation.Stamp();
        var socketsBefore = redis.GetCounters().Interactive.SocketCount;
        await redis.GetDatabase().StringSetAsync("written", "1");
        await Eventually.HoldsAsync(() => Task.FromResult(redis.GetCounters().Interactive.SocketCount > socketsBefore),
            TimeSpan.FromSeconds(20), "the client tried the down server again");

        Assert.True((await confirmation.WaitAsync(1, InSync, stamp)).Confirms(1));
    }

    [Fact]
    public async Task WaitAsync_StampedForAnotherServer_DoesNotConfirm()
    {
        // The client's map moved the relay's slot between the write and the WAIT (a failover, a redirection): the
        // WAIT counts the new server's replicas, not the write's.
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        var confirmation = new ReplicaConfirmation(redis);
        var stamp = confirmation.Stamp() with { Server = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, replica.Port) };
        await redis.GetDatabase().StringSetAsync("written", "1");

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionChanged: true), await confirmation.WaitAsync(1, InSync, stamp));
        Assert.False((await confirmation.WaitAsync(1, InSync, default)).Confirms(1));
    }

    private static long WaitCalls(string commandStats)
    {
        // cmdstat_wait:calls=3,usec=...
        var line = commandStats.Split('\n').Single(l => l.StartsWith("cmdstat_wait:", StringComparison.Ordinal));
        var calls = line.Split(':')[1].Split(',')[0];
        return long.Parse(calls["calls=".Length..], System.Globalization.CultureInfo.InvariantCulture);
    }
}
