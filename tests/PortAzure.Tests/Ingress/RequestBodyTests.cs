using System.IO.Pipelines;
using Microsoft.AspNetCore.Http;
using PortAzure.Ingress.Webhooks;

namespace PortAzure.Tests.Ingress;

public class RequestBodyTests
{
    private const long Limit = 1024 * 1024;

    [Fact]
    public async Task ReadAsync_DeclaredLengthNotYetSent_HoldsOnlyWhatArrived()
    {
        var pipe = new Pipe();
        await pipe.Writer.WriteAsync(new byte[100]);

        // The read waits for the other 1,048,476 bytes; what it allocated until then is on this thread.
        var before = GC.GetAllocatedBytesForCurrentThread();
        var reading = RequestBody.ReadAsync(pipe.Reader.AsStream(), Limit, Limit, CancellationToken.None);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.False(reading.IsCompleted);
        Assert.InRange(allocated, 0, 4 * RequestBody.InitialBufferBytes);
        await pipe.Writer.CompleteAsync();
        await Assert.ThrowsAsync<BadHttpRequestException>(() => reading);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(RequestBody.InitialBufferBytes - 1)]
    [InlineData(RequestBody.InitialBufferBytes)]
    [InlineData(RequestBody.InitialBufferBytes + 1)]
    [InlineData(5 * RequestBody.InitialBufferBytes + 7)]
    [InlineData(Limit)]
    public async Task ReadAsync_BodyInPieces_ReturnsExactlyTheBytesSent(int length)
    {
        var sent = new byte[length];
        Random.Shared.NextBytes(sent);
        var pipe = new Pipe();
        var reading = RequestBody.ReadAsync(pipe.Reader.AsStream(), length, Limit, CancellationToken.None);
        for (var offset = 0; offset < length; offset += 3000)
        {
            await pipe.Writer.WriteAsync(sent.AsMemory(offset, Math.Min(3000, length - offset)));
        }

        var body = await reading;

        Assert.Equal(sent, body);
        await pipe.Writer.CompleteAsync();
    }

    [Fact]
    public async Task ReadAsync_DeclaredLengthOverLimit_ReturnsNullWithoutReading()
    {
        var pipe = new Pipe();

        Assert.Null(await RequestBody.ReadAsync(pipe.Reader.AsStream(), Limit + 1, Limit, CancellationToken.None));
    }

    [Fact]
    public async Task ReadAsync_ChunkedOverLimit_ReturnsNull()
    {
        var pipe = new Pipe();
        await pipe.Writer.WriteAsync(new byte[1001]);
        await pipe.Writer.CompleteAsync();

        Assert.Null(await RequestBody.ReadAsync(pipe.Reader.AsStream(), contentLength: null, 1000, CancellationToken.None));
    }
}
