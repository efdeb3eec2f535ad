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
        var epoch = confirmation.ConnectionEpoch;
        await redis.GetDatabase().StringSetAsync("written", "1");
        var acknowledged = await confirmation.WaitAsync(1, InSync, epoch);

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionFailed: false), acknowledged);
        Assert.True(acknowledged.Confirms(1));
        Assert.Equal("1", (string?)await onReplica.GetServer("127.0.0.1", replica.Port).ExecuteAsync("GET", "written"));
    }

    [Fact]
    public async Task WaitAsync_ReplicaPaused_AnswersNoneAfterTheTimeout()
    {
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        replica.Pause();
        try
        {
            await redis.GetDatabase().StringSetAsync("written", "1");

            Assert.Equal(0, (await new ReplicaConfirmation(redis).WaitAsync(1, Timeout, 0)).Replicas);
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
        await leased.Db.StringSetAsync("written", "1");

        Assert.False((await new ReplicaConfirmation(leased.Connection).WaitAsync(1, Timeout, 0)).Confirms(1));
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
            await db.StringSetAsync($"written:{i}", "1");
            return await confirmation.WaitAsync(1, InSync, 0);
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
        await redis.GetDatabase().StringSetAsync("first", "1");
        Assert.Equal(0, (await confirmation.WaitAsync(1, Timeout, 0)).Replicas);
        replica.Resume();

        await redis.GetDatabase().StringSetAsync("second", "1");

        Assert.True((await confirmation.WaitAsync(1, InSync, 0)).Confirms(1));
    }

    [Fact]
    public async Task WaitAsync_ConnectionFailedSinceTheWrite_DoesNotConfirm()
    {
        // A WAIT on the new connection counts none of the old one's writes, and answers with every replica at once.
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        await using var admin = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        var confirmation = new ReplicaConfirmation(redis);
        var epoch = confirmation.ConnectionEpoch;
        await redis.GetDatabase().StringSetAsync("written", "1");

        await admin.GetServer("127.0.0.1", primary.Port).ExecuteAsync("CLIENT", "KILL", "ID", (long)await redis.GetServer("127.0.0.1", primary.Port).ExecuteAsync("CLIENT", "ID"));
        await Eventually.HoldsAsync(() => Task.FromResult(confirmation.ConnectionEpoch != epoch), TimeSpan.FromSeconds(10), "the client saw its connection fail");
        await Eventually.HoldsAsync(() => Task.FromResult(redis.IsConnected), TimeSpan.FromSeconds(10), "the client reconnected");
        var acknowledged = await confirmation.WaitAsync(1, InSync, epoch);

        Assert.Equal(new ReplicaAcknowledgement(1, ConnectionFailed: true), acknowledged);
        Assert.False(acknowledged.Confirms(1));
    }

    private static long WaitCalls(string commandStats)
    {
        // cmdstat_wait:calls=3,usec=...
        var line = commandStats.Split('\n').Single(l => l.StartsWith("cmdstat_wait:", StringComparison.Ordinal));
        var calls = line.Split(':')[1].Split(',')[0];
        return long.Parse(calls["calls=".Length..], System.Globalization.CultureInfo.InvariantCulture);
    }
}
