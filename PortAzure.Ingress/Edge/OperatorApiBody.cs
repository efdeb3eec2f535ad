using Microsoft.AspNetCore.Http.Features;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// No operator call takes a body, and the Dispatcher acts on a call's path and headers alone. YARP forwards the headers
/// first and copies the body after: a body over Kestrel's limit failed only then, and the client was told 413 for a
/// replay or discard the Dispatcher had already carried out (a batch replay retried after it would replay up to its limit
/// more). So the body, if any, is read here, before anything is forwarded, and one over <see cref="MaxBodyBytes"/> is
/// refused with nothing done. A small one (a client that always sends <c>{}</c>) is forwarded and ignored, as before.
/// </summary>
internal static class OperatorApiBody
{
    public const int MaxBodyBytes = 16 * 1024;

    public static IApplicationBuilder UseOperatorApiBodyLimit(this IApplicationBuilder proxy) =>
        proxy.Use(async (context, next) =>
        {
            var request = context.Request;
            if (request.ContentLength > MaxBodyBytes)
            {
                await TooLarge().ExecuteAsync(context);
                return;
            }
            if (context.Features.Get<IHttpRequestBodyDetectionFeature>() is { CanHaveBody: true })
            {
                if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size)
                {
                    size.MaxRequestBodySize = MaxBodyBytes;
                }
                // Kept in memory (it is at most the limit) and read again by YARP.
                request.EnableBuffering(bufferThreshold: MaxBodyBytes, bufferLimit: MaxBodyBytes);
                try
                {
                    await request.Body.CopyToAsync(Stream.Null, context.RequestAborted);
                }
                catch (BadHttpRequestException ex)
                {
                    await (ex.StatusCode == StatusCodes.Status413PayloadTooLarge ? TooLarge()
                        : Problems.Create(StatusCodes.Status400BadRequest, "body_unreadable", "The call's body could not be read to its end; nothing was done.")).ExecuteAsync(context);
                    return;
                }
                catch (IOException) when (request.Body.Position >= MaxBodyBytes)
                {
                    // The buffer's own limit (where Kestrel's per-request limit could not be lowered).
                    await TooLarge().ExecuteAsync(context);
                    return;
                }
                request.Body.Position = 0;
            }
            await next(context);
        });

    private static IResult TooLarge() =>
        Problems.Create(StatusCodes.Status413PayloadTooLarge, "body_too_large",
            $"Operator calls take no body, and this one is over {MaxBodyBytes} bytes; nothing was done. Send the call without a body.");
}
