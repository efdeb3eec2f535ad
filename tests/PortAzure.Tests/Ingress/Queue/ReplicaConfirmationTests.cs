using PortAzure.Ingress.Queue;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress.Queue;

/// <summary>WAIT against a real primary and its replica.</summary>
public class ReplicaConfirmationTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMilliseconds(300);

    [Fact]
    public async Task WaitAsync_ReplicaInSync_CountsItAndTheReplicaHoldsTheWrite()
    {
        await using var primary = await RedisServer.StartAsync();
        await using var replica = await RedisServer.StartReplicaOfAsync(primary);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString);
        await using var onReplica = await ConnectionMultiplexer.ConnectAsync(replica.ConnectionString);

        await redis.GetDatabase().StringSetAsync("written", "1");
        var acknowledged = await new ReplicaConfirmation(redis).WaitAsync(1, Timeout);

        Assert.Equal(1, acknowledged);
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

            Assert.Equal(0, await new ReplicaConfirmation(redis).WaitAsync(1, Timeout));
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

        Assert.Equal(0, await new ReplicaConfirmation(leased.Connection).WaitAsync(1, Timeout));
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
            return await confirmation.WaitAsync(1, Timeout);
        }));

        Assert.All(acknowledged, a => Assert.Equal(1, a));
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
        Assert.Equal(0, await confirmation.WaitAsync(1, Timeout));
        replica.Resume();

        await redis.GetDatabase().StringSetAsync("second", "1");

        Assert.Equal(1, await confirmation.WaitAsync(1, TimeSpan.FromSeconds(2)));
    }

    private static long WaitCalls(string commandStats)
    {
        // cmdstat_wait:calls=3,usec=...
        var line = commandStats.Split('\n').Single(l => l.StartsWith("cmdstat_wait:", StringComparison.Ordinal));
        var calls = line.Split(':')[1].Split(',')[0];
        return long.Parse(calls["calls=".Length..], System.Globalization.CultureInfo.InvariantCulture);
    }
}
