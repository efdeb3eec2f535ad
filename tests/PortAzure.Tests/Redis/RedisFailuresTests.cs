using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Redis;

public class RedisFailuresTests
{
    [Fact]
    public async Task IsOutOfMemory_ScriptWriteRefusedAtMaxmemory_IsOutOfMemoryAndAFailure()
    {
        await using var server = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var redis = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
        var db = redis.GetDatabase();
        await RedisServer.FillAsync(db);

        var refused = await Assert.ThrowsAsync<RedisServerException>(() => db.ScriptEvaluateAsync("return redis.call('SET', KEYS[1], 'x')", ["k"]));

        Assert.True(RedisFailures.IsOutOfMemory(refused), refused.Message);
        Assert.True(RedisFailures.IsFailure(refused));
    }

    [Theory]
    // Redis 6.2 wraps a refused call in its script error.
    [InlineData("ERR Error running script (call to f_0123): @user_script:1: @user_script: 1: -OOM command not allowed when used memory > 'maxmemory'. ", true)]
    [InlineData("OOM command not allowed when used memory > 'maxmemory'.", true)]
    [InlineData("WRONGTYPE Operation against a key holding the wrong kind of value", false)]
    [InlineData("ERR value is not an integer or out of range", false)]
    public void IsOutOfMemory_ServerErrorText_OnlyTheMaxmemoryRefusal(string message, bool expected)
    {
        Assert.Equal(expected, RedisFailures.IsOutOfMemory(new RedisServerException(message)));
        Assert.False(RedisFailures.IsOutOfMemory(new RedisConnectionException(ConnectionFailureType.SocketFailure, "OOM command not allowed")));
    }

    [Fact]
    public void IsFailure_ClientExceptionsAndTimeouts_AreFailures()
    {
        Assert.True(RedisFailures.IsFailure(new RedisConnectionException(ConnectionFailureType.SocketClosed, "closed")));
        Assert.True(RedisFailures.IsFailure(new RedisTimeoutException("timeout", CommandStatus.Sent)));
        Assert.True(RedisFailures.IsFailure(new RedisServerException("LOADING Redis is loading the dataset in memory")));
        Assert.True(RedisFailures.IsFailure(new TimeoutException()));
    }

    [Fact]
    public void IsFailure_SocketExceptionTheClientPassesOnUnwrapped_IsAFailureWithOutcomeUnknown()
    {
        // What the client gave the finish calls in flight when Redis was killed under load (RedisRestartTests).
        var reset = FaultyRedis.ConnectionReset();

        Assert.True(RedisFailures.IsFailure(reset));
        Assert.True(RedisFailures.OutcomeUnknown(reset));
    }

    [Fact]
    public void OutcomeUnknown_CommandNeverLeftTheBacklog_IsKnownNotRun()
    {
        // What the client throws when no connection came up within the timeout: the command was never written.
        Assert.False(RedisFailures.OutcomeUnknown(new RedisConnectionException(ConnectionFailureType.UnableToConnect,
            "The message timed out in the backlog attempting to send because no connection became available", null, CommandStatus.WaitingInBacklog)));
        Assert.False(RedisFailures.OutcomeUnknown(new RedisTimeoutException("timed out in the backlog", CommandStatus.WaitingInBacklog)));

        Assert.True(RedisFailures.OutcomeUnknown(new RedisTimeoutException("Timeout awaiting response", CommandStatus.Sent)));
        Assert.True(RedisFailures.OutcomeUnknown(new RedisConnectionException(ConnectionFailureType.SocketClosed, "closed", null, CommandStatus.Sent)));
        Assert.True(RedisFailures.OutcomeUnknown(new RedisConnectionException(ConnectionFailureType.SocketClosed, "closed")));
    }

    [Fact]
    public void IsFailure_IOExceptionsOfTheWebServer_AreNot()
    {
        // The Dispatcher's exception handler asks for the whole app: a client's broken request is not "Redis unavailable".
        Assert.False(RedisFailures.IsFailure(new Microsoft.AspNetCore.Connections.ConnectionResetException("reset by the client")));
        Assert.False(RedisFailures.IsFailure(new Microsoft.AspNetCore.Http.BadHttpRequestException("bad body")));
        Assert.False(RedisFailures.IsFailure(new System.Net.Sockets.SocketException(104)));
        Assert.False(RedisFailures.IsFailure(new EndOfStreamException()));
    }

    [Fact]
    public async Task IsFailure_InvalidOperationThrownInsideTheClient_IsAFailure()
    {
        // The client's own frames on the stack, as when its pipe writer was completed under a dying connection: here the
        // client reads a script parameter whose getter throws.
        await using var redis = await SharedRedis.ConnectAsync();
        var fromClient = await Record.ExceptionAsync(() => LuaScript.Prepare("return @Value").EvaluateAsync(redis.Db, new ThrowingParameters()));

        Assert.IsType<InvalidOperationException>(fromClient);
        Assert.True(RedisFailures.IsFailure(fromClient));
        Assert.True(RedisFailures.OutcomeUnknown(fromClient));
    }

    [Fact]
    public void IsFailure_InvalidOperationOfOurOwn_IsNot()
    {
        var ours = Record.Exception(ThrowOurOwn);

        Assert.False(RedisFailures.IsFailure(ours!));
        Assert.False(RedisFailures.IsFailure(new InvalidCastException()));
    }

    private static void ThrowOurOwn() => throw new InvalidOperationException("a bug of ours");

    public sealed class ThrowingParameters
    {
        public string Value => throw new InvalidOperationException("Writing is not allowed after writer was completed.");
    }
}
